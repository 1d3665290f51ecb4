//! The web UI in a real headless Chromium, driven over the DevTools protocol (the minimal WebSocket client of
//! `common::ws`, no crate): type a prompt, generate, watch the progress bar move and the image appear in the gallery,
//! start a long job and cancel it, and save a screenshot under the test's output folder. Prints SKIPPED when
//! no `chromium` is on PATH (Debian: `apt-get install chromium`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::ws::WebSocket;
use common::*;
use serde_json::{json, Value};
use umbra_serve::ServeConfig;

struct Cdp {
    ws: WebSocket,
    next: u64,
}

impl Cdp {
    fn connect(addr: std::net::SocketAddr, url: &str) -> Cdp {
        let rest = url.strip_prefix("ws://").unwrap();
        let (_, path) = rest.split_at(rest.find('/').unwrap());
        Cdp { ws: WebSocket::connect(addr, path), next: 1 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.ws.send(json!({"id": id, "method": method, "params": params}).to_string().as_bytes());
        loop {
            let v: Value = serde_json::from_slice(&self.ws.read_message()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, js: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": js, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, what: &str, js: &str, secs: u64) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.eval(js);
            if v.as_bool() == Some(true) || (!v.is_null() && v.as_bool().is_none() && v != json!("")) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> Option<String> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(c.to_string());
        }
    }
    umbra_test_support::skipped("no chromium on PATH (apt-get install chromium)");
    None
}

#[test]
fn the_web_ui_generates_shows_progress_and_cancels_in_chromium() {
    let Some(bin) = chromium() else { return };
    let Some(srv) = server(ServeConfig::default(), false) else { return };
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_browser");
    std::fs::create_dir_all(&out).unwrap();
    let profile = out.join(format!("profile-{}", std::process::id()));
    let mut child = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = KillOnDrop(child);
    let mut lines = BufReader::new(stderr).lines();
    let t_launch = Instant::now();
    let ws = loop {
        let l = lines.next().expect("chromium exited before printing its DevTools address").unwrap();
        if let Some(i) = l.find("ws://") {
            break l[i..].trim().to_string();
        }
    };
    eprintln!("chromium up in {:.1}s: {ws}", t_launch.elapsed().as_secs_f64());
    std::thread::spawn(move || for _ in lines {});
    // The page target of about:blank.
    let port: u16 = ws["ws://127.0.0.1:".len()..].split('/').next().unwrap().parse().unwrap();
    let devtools = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let page = loop {
        let list = get(devtools, "/json/list").json();
        if let Some(p) = list.as_array().unwrap().iter().find(|t| t["type"] == "page") {
            break p["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut cdp = Cdp::connect(devtools, &page);
    cdp.call("Page.enable", json!({}));
    cdp.call("Page.navigate", json!({"url": srv.url()}));
    cdp.wait_for("the model list", "document.querySelector('#model') && document.querySelector('#model').options.length > 0 && document.querySelector('#sampler').options.length > 1", 30);
    // Type a prompt and generate with Ctrl+Enter; sample the progress bar while it runs.
    cdp.eval("document.querySelector('#prompt').focus()");
    cdp.call("Input.insertText", json!({"text": "a photo of a cat"}));
    cdp.eval("for (const [k, v] of [['steps', 40], ['width', 64], ['height', 64], ['seed', 7]]) document.getElementById(k).value = v; true");
    cdp.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyDown", "key": "Enter", "code": "Enter", "modifiers": 2, "windowsVirtualKeyCode": 13}),
    );
    cdp.call(
        "Input.dispatchKeyEvent",
        json!({"type": "keyUp", "key": "Enter", "code": "Enter", "modifiers": 2, "windowsVirtualKeyCode": 13}),
    );
    let mut widths = Vec::new();
    let t0 = Instant::now();
    loop {
        let w = cdp.eval("parseFloat(document.querySelector('#bar').style.width) || 0").as_f64().unwrap();
        if widths.last() != Some(&w) {
            widths.push(w);
        }
        if cdp.eval("document.querySelectorAll('#gallery img').length").as_u64() == Some(1) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no image after 60 s; bar widths {widths:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("progress bar widths seen: {widths:?}");
    assert!(widths.iter().any(|&w| w > 0.0 && w < 100.0), "the bar never showed partial progress: {widths:?}");
    assert!(widths.windows(2).all(|p| p[1] >= p[0]), "the bar went backwards: {widths:?}");
    let status = cdp.eval("document.querySelector('#status').textContent");
    assert!(status.as_str().unwrap().contains("seeds 7"), "{status}");
    let caption = cdp.eval("document.querySelector('#gallery figcaption').textContent");
    assert!(caption.as_str().unwrap().contains("Seed: 7"), "{caption}");
    let natural = cdp.eval("document.querySelector('#gallery img').naturalWidth");
    assert_eq!(natural, json!(64));
    // Click-to-reuse restores the seed.
    cdp.eval("document.getElementById('seed').value = 1; document.querySelector('#gallery figure').click(); true");
    assert_eq!(cdp.eval("document.getElementById('seed').value"), json!("7"));
    // A long job, cancelled from the UI.
    cdp.eval("document.getElementById('steps').value = 150; document.getElementById('generate').click(); true");
    cdp.wait_for(
        "the long job to make progress",
        "parseFloat(document.querySelector('#bar').style.width) > 0 && !document.getElementById('cancel').disabled",
        30,
    );
    cdp.eval("document.getElementById('cancel').click(); true");
    cdp.wait_for("the cancellation", "document.querySelector('#status').textContent.startsWith('cancelled')", 30);
    assert_eq!(cdp.eval("document.querySelectorAll('#gallery img').length"), json!(1));
    assert_eq!(cdp.eval("document.getElementById('generate').disabled"), json!(false));
    // Screenshot of the final page.
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let path = out.join("ui.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(image::load_from_memory(&png).unwrap().width() >= 800);
    let _ = std::fs::remove_dir_all(&profile);
}
