//! Test helpers: the tiny reference pipeline, a server on an ephemeral 127.0.0.1 port, and a minimal
//! HTTP/1.1 client over std's TcpStream (no client crate), with Server-Sent Events.
#![allow(dead_code)]

pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use umbra_sample::pipelines::load::{self, PipelineSource, SchedulerOverrides};
use umbra_serve::{Model, Running, ServeConfig};

pub fn reference_dir() -> Option<PathBuf> {
    umbra_test_support::tiny_sd("pipeline")
}

pub fn load_model(path: &std::path::Path, config_dir: Option<PathBuf>) -> Model {
    let src = PipelineSource {
        model: path.to_string_lossy().to_string(),
        config_dir,
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        hub: Default::default(),
    };
    Model::new(load::load_pipeline(&src, &SchedulerOverrides::default()).unwrap())
}

/// A server on the tiny pipeline (and, with `two`, the single-file checkpoint as a second model).
pub fn server(config: ServeConfig, two: bool) -> Option<Running> {
    let dir = reference_dir()?;
    let mut models = vec![load_model(&dir.join("pipeline"), None)];
    if two {
        models.push(load_model(&dir.join("tiny-sd-v1-ldm.safetensors"), Some(dir.join("pipeline"))));
    }
    Some(umbra_serve::start("127.0.0.1:0".parse().unwrap(), models, config, false).unwrap())
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {} body not JSON ({e}): {}", self.status, self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

fn write_request(s: &mut TcpStream, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn is_chunked(h: &[(String, String)]) -> bool {
    h.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
}

/// Read one chunk of a chunked body (None at the end).
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut l = String::new();
    if r.read_line(&mut l).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(l.trim().split(';').next()?, 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    if n == 0 {
        None
    } else {
        Some(buf)
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = connect(addr);
    write_request(&mut s, method, path, headers, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if is_chunked(&headers) {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else if let Some(n) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        body = vec![0; n.1.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
    } else {
        let _ = r.read_to_end(&mut body);
    }
    Resp { status, headers, body }
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

pub fn post_json(addr: SocketAddr, path: &str, v: &serde_json::Value) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], v.to_string().as_bytes())
}

/// Follow `/v1/jobs/{id}/events` until the `done` event, calling `on` with (event, data) for each event; `on`
/// returning false stops reading early.
pub fn sse(addr: SocketAddr, id: &str, mut on: impl FnMut(&str, &serde_json::Value) -> bool) {
    let mut s = connect(addr);
    write_request(&mut s, "GET", &format!("/v1/jobs/{id}/events"), &[], b"");
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    assert_eq!(status, 200);
    assert!(is_chunked(&headers));
    let mut buf = String::new();
    while let Some(c) = read_chunk(&mut r) {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut ev = "message".to_string();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    ev = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim());
                }
            }
            if data.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            if !on(&ev, &v) || ev == "done" {
                return;
            }
        }
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// A `w × h` RGB PNG (a gradient) or grayscale mask (left half white).
pub fn png(w: u32, h: u32, mask: bool) -> Vec<u8> {
    let img: image::DynamicImage = if mask {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, _| {
            image::Luma([if x < w / 2 { 255 } else { 0 }])
        }))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        }))
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A browser page the web-UI tests drive: Chromium over CDP (`serve_browser`), Firefox over WebDriver BiDi
/// (`serve_firefox`). The scenario below is written once against it.
pub trait Page {
    /// Evaluate `js` in the page; its value as JSON.
    fn eval(&mut self, js: &str) -> serde_json::Value;

    /// Poll `js` until it evaluates to `true`; panics after `secs` seconds naming `what`.
    fn wait_for(&mut self, what: &str, js: &str, secs: u64) {
        let t0 = std::time::Instant::now();
        while self.eval(js) != serde_json::json!(true) {
            assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The web UI after a generate with seed 7 at 64×64 was started: the progress bar only moves forward and shows
/// partial progress, one image arrives with its seed in the status and caption, clicking it restores the seed,
/// and a long job is cancelled from the UI (the gallery keeps the first image, Generate is enabled again).
pub fn check_generation_and_cancel(p: &mut impl Page) {
    use serde_json::json;
    let mut widths = Vec::new();
    let t0 = std::time::Instant::now();
    loop {
        let w = p.eval("parseFloat(document.querySelector('#bar').style.width) || 0").as_f64().unwrap();
        if widths.last() != Some(&w) {
            widths.push(w);
        }
        if p.eval("document.querySelectorAll('#gallery img').length").as_u64() == Some(1) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no image after 60 s; bar widths {widths:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("progress bar widths seen: {widths:?}");
    assert!(widths.iter().any(|&w| w > 0.0 && w < 100.0), "the bar never showed partial progress: {widths:?}");
    assert!(widths.windows(2).all(|p| p[1] >= p[0]), "the bar went backwards: {widths:?}");
    let status = p.eval("document.querySelector('#status').textContent");
    assert!(status.as_str().unwrap().contains("seeds 7"), "{status}");
    let caption = p.eval("document.querySelector('#gallery figcaption').textContent");
    assert!(caption.as_str().unwrap().contains("Seed: 7"), "{caption}");
    p.wait_for("the image to decode", "document.querySelector('#gallery img').complete", 10);
    assert_eq!(p.eval("document.querySelector('#gallery img').naturalWidth"), json!(64));
    // Click-to-reuse restores the seed.
    p.eval("document.getElementById('seed').value = 1; document.querySelector('#gallery figure').click(); true");
    assert_eq!(p.eval("document.getElementById('seed').value"), json!("7"));
    // A long job, cancelled from the UI.
    p.eval("document.getElementById('steps').value = 150; document.getElementById('generate').click(); true");
    p.wait_for(
        "the long job to make progress",
        "parseFloat(document.querySelector('#bar').style.width) > 0 && !document.getElementById('cancel').disabled",
        30,
    );
    p.eval("document.getElementById('cancel').click(); true");
    p.wait_for("the cancellation", "document.querySelector('#status').textContent.startsWith('cancelled')", 30);
    assert_eq!(p.eval("document.querySelectorAll('#gallery img').length"), json!(1));
    assert_eq!(p.eval("document.getElementById('generate').disabled"), json!(false));
}

/// A child process (the browser) killed and reaped when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
