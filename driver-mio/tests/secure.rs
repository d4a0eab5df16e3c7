//! The secure channel seen from outside: a test that speaks TCP to a real client process and
//! plays a peer that follows the protocol up to a point, then breaks it.
//!
//! - A hello, then a length prefix one past `MAX_HANDSHAKE_FRAME`: closed at the prefix.
//! - A hello, then a Noise handshake message made with another key: closed.
//! - A correct handshake with the right key (done here with `secure::Handshake`), then a
//!   plaintext (unsealed) `JobMsg::Run` frame: closed, and nothing runs.
//!
//! Each close is checked by the end of stream on the socket and by the client's log line giving
//! the reason (so that a close at the handshake timeout does not pass for one). The client is
//! killed and reaped when the test ends, whatever happened; every wait is bounded.

mod common;

use common::{client_bin, free_port, TempKey};
use plush_core::frame::{encode_hello, encode_once, split_frame, PREFIX};
use plush_core::wire::{Hello, JobKind, JobMsg, List, Message, Role, RunSpec, Target};
use plush_core::NodeId;
use plush_mio::secure::{Handshake, MAX_HANDSHAKE_FRAME};
use plush_mio::Key;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for the client to close a connection or log a line.
const WAIT: Duration = Duration::from_secs(20);

/// A client process whose log (stderr) the test reads; killed and reaped on drop.
struct Client {
    child: Child,
    addr: NodeId,
    log: Arc<Mutex<String>>,
}

impl Client {
    fn start(addr: NodeId, key_file: &std::path::Path) -> Client {
        let mut child = Command::new(client_bin())
            .args(["client", "--listen", &addr.to_string(), "--key-file"])
            .arg(key_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client binary");
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut c = Client { child, addr, log };
        let mut line = String::new();
        // The client prints its ready line or exits (end of stream): bounded.
        let _ = out.read_line(&mut line);
        assert!(line.starts_with(plush_mio::READY_PREFIX), "the client did not start: {line:?}; log: {}", c.log());
        // Keep its stdout a pipe with a reader for as long as it runs.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        assert!(matches!(c.child.try_wait(), Ok(None)));
        c
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until the log has a line containing every one of `parts`.
    fn wait_for_log(&self, parts: &[&str]) -> bool {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.log().lines().any(|l| parts.iter().all(|p| l.contains(p))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr.addr()).expect("connect to the client");
        s.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        s
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read one whole frame (at most `max` bytes after the prefix) from `s`, waiting at most
/// [`WAIT`]; its payload.
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>, max: usize) -> Vec<u8> {
    let end = Instant::now() + WAIT;
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((payload, used)) = split_frame(buf, max).expect("a frame within the maximum") {
            let p = payload.to_vec();
            buf.drain(..used);
            return p;
        }
        assert!(Instant::now() < end, "no whole frame from the client within {WAIT:?}");
        match s.read(&mut chunk) {
            Ok(0) => panic!("the client closed the connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Whether the client closes `s` (end of stream or a reset) within [`WAIT`]; whatever it sends
/// before is discarded.
fn closed(s: &mut TcpStream) -> bool {
    let end = Instant::now() + WAIT;
    let mut chunk = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    false
}

/// Send our hello as `me` and read the client's; (our hello's payload, theirs).
fn hellos(s: &mut TcpStream, buf: &mut Vec<u8>, me: NodeId, nonce: u64) -> (Vec<u8>, Vec<u8>) {
    let ours = encode_hello(&Hello::new(me, Role::Controller, nonce));
    s.write_all(&ours).expect("send our hello");
    let theirs = read_frame(s, buf, MAX_HANDSHAKE_FRAME);
    Hello::decode(&theirs).expect("the client's hello decodes");
    (ours[PREFIX..].to_vec(), theirs)
}

/// Another random key: not the cluster key.
fn another_key() -> Key {
    Key::generate()
}

#[test]
fn the_client_closes_what_breaks_the_secure_channel() {
    let port = free_port(1, 26_000);
    let key_file = TempKey::new("secure");
    let key = Key::read_file(&key_file.0).expect("read the test's key file");
    let mut client = Client::start(NodeId::loopback(0, port), &key_file.0);

    // 1. A hello, then a length prefix one past the handshake maximum: closed at the prefix.
    let me = NodeId::loopback(301, 9);
    let mut s = client.connect();
    let mut buf = Vec::new();
    hellos(&mut s, &mut buf, me, 1);
    s.write_all(&((MAX_HANDSHAKE_FRAME + 1) as u32).to_be_bytes()).expect("send the prefix");
    assert!(closed(&mut s), "the oversized prefix did not close the connection");
    let too_large = format!("frame of {} bytes exceeds the maximum of {MAX_HANDSHAKE_FRAME}", MAX_HANDSHAKE_FRAME + 1);
    assert!(
        client.wait_for_log(&[&me.to_string(), &too_large, "during the handshake"]),
        "closed at the prefix, not at the handshake timeout; log: {}",
        client.log()
    );

    // 2. A valid hello, then the first Noise message made with another key: closed.
    let me = NodeId::loopback(302, 9);
    let mut s = client.connect();
    let mut buf = Vec::new();
    let (ours, theirs) = hellos(&mut s, &mut buf, me, 2);
    let mut hs = Handshake::start(&another_key(), true, &ours, &theirs).expect("start a handshake");
    let msg1 = hs.next_frame().expect("write message 1").expect("the dialer speaks first");
    s.write_all(&msg1).expect("send message 1");
    assert!(closed(&mut s), "a handshake with another key did not close the connection");
    assert!(
        client.wait_for_log(&[&me.to_string(), "secure handshake failed"]),
        "closed for the handshake, not at its timeout; log: {}",
        client.log()
    );

    // 3. A correct handshake with the right key, then a plaintext `Run`: closed, nothing runs.
    let marker = std::env::temp_dir().join(format!("plush-secure-test-{}-ran", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let me = NodeId::loopback(303, 9);
    let mut s = client.connect();
    let mut buf = Vec::new();
    let (ours, theirs) = hellos(&mut s, &mut buf, me, 3);
    let mut hs = Handshake::start(&key, true, &ours, &theirs).expect("start a handshake");
    let msg1 = hs.next_frame().expect("write message 1").expect("the dialer speaks first");
    s.write_all(&msg1).expect("send message 1");
    let msg2 = read_frame(&mut s, &mut buf, MAX_HANDSHAKE_FRAME);
    hs.read(&msg2).expect("the client holds the same key: its answer opens");
    assert!(hs.is_finished(), "two messages complete NNpsk0");
    let _chan = hs.into_channel().expect("the channel");
    let spec = RunSpec {
        job: 1,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["touch".into(), marker.to_str().expect("a UTF-8 path").into()]),
        env: List(vec![]),
        cwd: None,
        timeout_ms: 0,
        stream: false,
        push: None,
        max_output: 0,
    };
    let run = encode_once(&Message::Job(JobMsg::Run(Box::new(spec)))).expect("encode the Run frame");
    s.write_all(&run).expect("send the plaintext Run");
    assert!(closed(&mut s), "a plaintext frame after the handshake did not close the link");
    assert!(
        client.wait_for_log(&[&me.to_string(), "a record failed to open", "closing the link"]),
        "closed for the record; log: {}",
        client.log()
    );
    // The client has moved on (it greets a new connection) and ran nothing.
    let mut s = client.connect();
    let mut buf = Vec::new();
    hellos(&mut s, &mut buf, NodeId::loopback(304, 9), 4);
    drop(s);
    assert!(!marker.exists(), "the plaintext Run ran");
    assert!(client.alive(), "none of this brings the client down");
}
