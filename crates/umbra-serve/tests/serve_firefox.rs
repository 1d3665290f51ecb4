//! The web UI in a real headless Firefox, driven over WebDriver BiDi (Firefox's own `--remote-debugging-port`,
//! no geckodriver; the minimal WebSocket client of `common::ws`): type a prompt with key events, generate
//! with Ctrl+Enter, watch the progress bar move and the image appear, start a long job and cancel it, and
//! save a screenshot under the test's output folder. Prints SKIPPED when no Firefox is on PATH (Debian:
//! `apt-get install firefox-esr`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::Engine;
use common::ws::WebSocket;
use common::*;
use serde_json::{json, Value};
use umbra_serve::ServeConfig;

struct Bidi {
    ws: WebSocket,
    next: u64,
    context: String,
}

impl Bidi {
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.ws.send(json!({"id": id, "method": method, "params": params}).to_string().as_bytes());
        loop {
            let v: Value = serde_json::from_slice(&self.ws.read_message()).unwrap();
            if v["id"] == id {
                assert_ne!(v["type"], "error", "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Key events (WebDriver key values: "\u{E009}" Control, "\u{E007}" Enter).
    fn keys(&mut self, actions: Vec<Value>) {
        let ctx = self.context.clone();
        self.call(
            "input.performActions",
            json!({"context": ctx, "actions": [{"type": "key", "id": "kb", "actions": actions}]}),
        );
        self.call("input.releaseActions", json!({"context": ctx}));
    }
}

impl Page for Bidi {
    fn eval(&mut self, js: &str) -> Value {
        let target = json!({"context": self.context});
        let r = self.call("script.evaluate", json!({"expression": js, "target": target, "awaitPromise": false}));
        assert_eq!(r["type"], "success", "{js}: {r}");
        r["result"]["value"].clone()
    }
}

fn firefox() -> Option<String> {
    for c in ["firefox-esr", "firefox"] {
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
    umbra_test_support::skipped("no firefox on PATH (apt-get install firefox-esr)");
    None
}

#[test]
fn the_web_ui_generates_shows_progress_and_cancels_in_firefox() {
    let Some(bin) = firefox() else { return };
    let Some(srv) = server(ServeConfig::default(), false) else { return };
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_firefox");
    let profile = out.join(format!("profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = Command::new(bin)
        .args(["--headless", "--no-remote", "--remote-debugging-port", "0", "--window-size", "1280,900"])
        .arg("--profile")
        .arg(&profile)
        .arg("about:blank")
        .env("MOZ_CRASHREPORTER_DISABLE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = KillOnDrop(child);
    let mut lines = BufReader::new(stderr).lines();
    let t_launch = Instant::now();
    let port: u16 = loop {
        let l = lines.next().expect("firefox exited before printing its WebDriver BiDi address").unwrap();
        if let Some(i) = l.find("ws://127.0.0.1:") {
            break l[i + "ws://127.0.0.1:".len()..].trim().trim_end_matches('/').parse().unwrap();
        }
    };
    eprintln!("firefox up in {:.1}s: BiDi on port {port}", t_launch.elapsed().as_secs_f64());
    std::thread::spawn(move || for _ in lines {});
    let ws = WebSocket::connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)), "/session");
    let mut b = Bidi { ws, next: 1, context: String::new() };
    let caps = b.call("session.new", json!({"capabilities": {}}));
    eprintln!("{} {}", caps["capabilities"]["browserName"], caps["capabilities"]["browserVersion"]);
    b.context = b.call("browsingContext.getTree", json!({}))["contexts"][0]["context"].as_str().unwrap().to_string();
    let ctx = b.context.clone();
    b.call("browsingContext.navigate", json!({"context": ctx, "url": srv.url(), "wait": "complete"}));
    b.wait_for("the model list", "!!(document.querySelector('#model') && document.querySelector('#model').options.length > 0 && document.querySelector('#sampler').options.length > 1)", 30);
    // Type the prompt key by key, then Ctrl+Enter; sample the progress bar while it runs.
    b.eval("document.querySelector('#prompt').focus(); true");
    let typing: Vec<Value> = "a photo of a cat"
        .chars()
        .flat_map(|c| {
            [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]
        })
        .collect();
    b.keys(typing);
    assert_eq!(b.eval("document.querySelector('#prompt').value"), json!("a photo of a cat"));
    b.eval("for (const [k, v] of [['steps', 40], ['width', 64], ['height', 64], ['seed', 7]]) document.getElementById(k).value = v; document.querySelector('#prompt').focus(); true");
    b.keys(vec![
        json!({"type": "keyDown", "value": "\u{E009}"}),
        json!({"type": "keyDown", "value": "\u{E007}"}),
        json!({"type": "keyUp", "value": "\u{E007}"}),
        json!({"type": "keyUp", "value": "\u{E009}"}),
    ]);
    check_generation_and_cancel(&mut b);
    let shot = b.call("browsingContext.captureScreenshot", json!({"context": ctx}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let path = out.join("ui.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    assert!(image::load_from_memory(&png).unwrap().width() >= 800);
    // Close the browser cleanly (the guard kills it otherwise).
    b.ws.send(json!({"id": 0, "method": "browser.close", "params": {}}).to_string().as_bytes());
    drop(guard);
    let _ = std::fs::remove_dir_all(&profile);
}
