//! The web UI in a real headless Chromium, driven over the DevTools protocol (the minimal WebSocket client of
//! `common::ws`, no crate): type a prompt, generate, watch the progress bar move and the image appear in the gallery,
//! start a long job and cancel it, and save a screenshot under the test's output folder. Prints SKIPPED when
//! no `chromium` is on PATH (Debian: `apt-get install chromium`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
}

impl Page for Cdp {
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": js, "returnByValue": true}));
        r["result"]["value"].clone()
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
    cdp.wait_for("the model list", "!!(document.querySelector('#model') && document.querySelector('#model').options.length > 0 && document.querySelector('#sampler').options.length > 1)", 30);
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
    check_generation_and_cancel(&mut cdp);
    // Screenshot of the final page.
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let path = out.join("ui.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(image::load_from_memory(&png).unwrap().width() >= 800);
    let _ = std::fs::remove_dir_all(&profile);
}
