//! A minimal WebSocket client (text frames, client-side masking, no extensions) for the browser tests: the
//! DevTools protocol of Chromium and WebDriver BiDi of Firefox both speak JSON over it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;

pub struct WebSocket {
    s: TcpStream,
}

impl WebSocket {
    /// Open `ws://{addr}{path}`.
    pub fn connect(addr: SocketAddr, path: &str) -> WebSocket {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        // Read the handshake byte by byte, so no frame bytes are buffered away.
        let mut r = BufReader::with_capacity(1, s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 101"), "websocket handshake: {line}");
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l.trim().is_empty() {
                break;
            }
        }
        WebSocket { s }
    }

    pub fn send(&mut self, payload: &[u8]) {
        let mut f = vec![0x81u8];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
        let mask: [u8; 4] = rand::random();
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// The next whole message (continuation frames joined).
    pub fn read_message(&mut self) -> Vec<u8> {
        let mut msg = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).unwrap();
            let mut n = (h[1] & 0x7f) as u64;
            if n == 126 {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                n = u16::from_be_bytes(b) as u64;
            } else if n == 127 {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                n = u64::from_be_bytes(b);
            }
            let mut p = vec![0u8; n as usize];
            self.s.read_exact(&mut p).unwrap();
            msg.extend(p);
            if h[0] & 0x80 != 0 {
                return msg;
            }
        }
    }
}
