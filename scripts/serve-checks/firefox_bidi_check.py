import socket, os, json, base64, subprocess, sys, time, re, struct, shutil
class WS:
    def __init__(s, host, port, path):
        s.sock = socket.create_connection((host, port)); s.sock.settimeout(60)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        buf=b""
        while b"\r\n\r\n" not in buf: buf += s.sock.recv(1)
        assert b" 101 " in buf.split(b"\r\n")[0], buf
        s.next=1
    def send(s, obj):
        p=json.dumps(obj).encode(); n=len(p); f=bytearray([0x81])
        if n<126: f.append(0x80|n)
        elif n<65536: f.append(0x80|126); f+=struct.pack(">H",n)
        else: f.append(0x80|127); f+=struct.pack(">Q",n)
        m=os.urandom(4); f+=m; f+=bytes(b^m[i%4] for i,b in enumerate(p)); s.sock.sendall(f)
    def rx(s, n):
        b=b""
        while len(b)<n:
            c=s.sock.recv(n-len(b)); assert c; b+=c
        return b
    def recv(s):
        msg=b""
        while True:
            h=s.rx(2); n=h[1]&0x7f
            if n==126: n=struct.unpack(">H",s.rx(2))[0]
            elif n==127: n=struct.unpack(">Q",s.rx(8))[0]
            msg+=s.rx(n)
            if h[0]&0x80: return json.loads(msg)
    def call(s, method, params):
        i=s.next; s.next+=1; s.send({"id":i,"method":method,"params":params})
        while True:
            v=s.recv()
            if v.get("id")==i:
                if v.get("type")=="error": raise Exception(f"{method}: {v}")
                return v["result"]
url=sys.argv[1]
prof="/tmp/ffbidi/profile"; shutil.rmtree(prof, ignore_errors=True); os.makedirs(prof)
t0=time.time()
p=subprocess.Popen(["nice","-n","19","firefox-esr","--headless","--no-remote","--profile",prof,"--remote-debugging-port","0","--window-size","1280,900","about:blank"],stderr=subprocess.PIPE,stdout=subprocess.DEVNULL,text=True)
port=None
for line in p.stderr:
    print("ff:", line.rstrip())
    m=re.search(r"WebDriver BiDi listening on ws://127\.0\.0\.1:(\d+)", line)
    if m: port=int(m.group(1)); break
print("up in", time.time()-t0, "port", port)
ws=WS("127.0.0.1", port, "/session")
print(ws.call("session.new", {"capabilities": {}})["capabilities"]["browserVersion"])
ctx=ws.call("browsingContext.getTree", {})["contexts"][0]["context"]
ws.call("browsingContext.navigate", {"context": ctx, "url": url, "wait": "complete"})
def ev(js):
    r=ws.call("script.evaluate", {"expression": js, "target": {"context": ctx}, "awaitPromise": False})
    return r["result"].get("value")
for _ in range(300):
    if ev("!!(document.querySelector('#model') && document.querySelector('#model').options.length > 0 && document.querySelector('#sampler').options.length > 1)"): break
    time.sleep(0.05)
ev("document.querySelector('#prompt').focus()")
acts=[]
for ch in "a photo of a cat": acts += [{"type":"keyDown","value":ch},{"type":"keyUp","value":ch}]
ws.call("input.performActions", {"context": ctx, "actions": [{"type":"key","id":"kb","actions":acts}]})
ev("for (const [k, v] of [['steps', 40], ['width', 64], ['height', 64], ['seed', 7]]) document.getElementById(k).value = v; true")
ws.call("input.performActions", {"context": ctx, "actions": [{"type":"key","id":"kb","actions":[{"type":"keyDown","value":"\uE009"},{"type":"keyDown","value":"\uE007"},{"type":"keyUp","value":"\uE007"},{"type":"keyUp","value":"\uE009"}]}]})
ws.call("input.releaseActions", {"context": ctx})
widths=[]; t1=time.time()
while True:
    w=ev("parseFloat(document.querySelector('#bar').style.width) || 0")
    if not widths or widths[-1]!=w: widths.append(w)
    if ev("document.querySelectorAll('#gallery img').length")==1: break
    assert time.time()-t1<60, widths
    time.sleep(0.01)
print("widths", widths)
print("prompt:", ev("document.querySelector('#prompt').value"))
print("status:", ev("document.querySelector('#status').textContent"))
print("caption:", ev("document.querySelector('#gallery figcaption').textContent"))
for _ in range(100):
    if ev("document.querySelector('#gallery img').complete"): break
    time.sleep(0.05)
print("natural:", ev("document.querySelector('#gallery img').naturalWidth"))
shot=ws.call("browsingContext.captureScreenshot", {"context": ctx})
open("/tmp/ffbidi/firefox-ui.png","wb").write(base64.b64decode(shot["data"]))
print("total", time.time()-t0)
p.kill()
