//! `echo-labctl connect`: an echo session from a terminal or a pipe.
//!
//! The client sends lines and prints what comes back, telling echo from the
//! server's notices. It can do so without any framing because echo is
//! byte-exact: the client remembers what it sent and not yet got back, and
//! whatever arrives that is not the next expected byte must be a notice
//! line (`[echo-lab] ...`, see [`crate::protocol`]). The [`Demux`] that does
//! this is pure and tested on its own.
//!
//! A reader thread owns the receiving side: it prints echo to stdout and
//! notices to stderr as they arrive, so a notice shows up even while the
//! user sits at the prompt — and a closing one (idle timeout, shutdown)
//! ends the session at once with a non-zero status. The main thread owns
//! the sending side: a line editor with history on a terminal, plain line
//! reading from a pipe. In both it waits for each line's echo before going
//! on, so output stays in order and a piped session exits right after the
//! last echo arrives.
//!
//! With `--tls` the same session runs over the plaintext end of a pump
//! ([`crate::client_tls`]): the session is generic over its [`Duplex`].

use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use echo_lab_proto::exit::{EX_UNAVAILABLE, EX_USAGE};
use echo_lab_proto::protocol::{is_disconnect, NOTICE_PREFIX};
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions, Termios};

/// Something the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Echo of bytes we sent.
    Echo(Vec<u8>),
    /// A notice line, without the prefix and line end.
    Notice(String),
    /// Bytes that are neither (a server that is not echo-lab, or a bug).
    Other(Vec<u8>),
}

/// Splits the received byte stream into echo and notices.
#[derive(Debug, Default)]
pub struct Demux {
    /// Sent, not yet echoed.
    expected: VecDeque<u8>,
    /// Received, not yet classified (a notice not yet complete).
    buf: Vec<u8>,
}

impl Demux {
    /// Records bytes sent that the server will echo.
    pub fn sent(&mut self, data: &[u8]) {
        self.expected.extend(data);
    }

    /// Bytes sent and not yet echoed.
    pub fn outstanding(&self) -> usize {
        self.expected.len()
    }

    /// Classifies newly received bytes.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Item> {
        self.buf.extend_from_slice(data);
        let mut items = Vec::new();
        loop {
            if self.buf.is_empty() {
                break;
            }
            let common = self
                .buf
                .iter()
                .zip(self.expected.iter())
                .take_while(|(a, b)| a == b)
                .count();
            if common > 0 {
                self.expected.drain(..common);
                items.push(Item::Echo(self.buf.drain(..common).collect()));
                continue;
            }
            // Not echo: a notice, possibly on a fresh line.
            let skip = if self.buf.starts_with(b"\r\n") { 2 } else { 0 };
            let rest = &self.buf[skip..];
            let marker = NOTICE_PREFIX.as_bytes();
            let n = rest.len().min(marker.len());
            if self.buf == b"\r" {
                break; // maybe the start of "\r\n[echo-lab] ": wait for more
            }
            if rest[..n] != marker[..n] {
                let end = memchr::memchr(b'\n', &self.buf).map_or(self.buf.len(), |i| i + 1);
                items.push(Item::Other(self.buf.drain(..end).collect()));
                continue;
            }
            if rest.len() < marker.len() {
                break; // incomplete marker
            }
            match memchr::memchr(b'\n', &rest[marker.len()..]) {
                Some(i) => {
                    let text = &rest[marker.len()..marker.len() + i];
                    let text = String::from_utf8_lossy(text)
                        .trim_end_matches('\r')
                        .to_string();
                    let used = skip + marker.len() + i + 1;
                    self.buf.drain(..used);
                    items.push(Item::Notice(text));
                }
                None => break,
            }
        }
        items
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server said goodbye (we sent `disconnect`).
    Goodbye,
    /// The server closed with a notice (idle timeout, busy, shutdown).
    Closed(String),
    /// The server closed without a notice.
    Eof,
    /// Reading failed.
    Error(String),
}

impl End {
    /// Exit status for the session.
    pub fn code(&self) -> i32 {
        match self {
            End::Goodbye => 0,
            End::Closed(n) if n.starts_with("busy") => EX_UNAVAILABLE,
            _ => 1,
        }
    }
}

#[derive(Default)]
struct Shared {
    demux: Demux,
    end: Option<End>,
    /// The main thread waits for an echo, or is ending the session itself
    /// (an end of session is then handled by it, not by the reader).
    waiting: bool,
}

type State = Arc<(Mutex<Shared>, Condvar)>;

fn lock(state: &State) -> std::sync::MutexGuard<'_, Shared> {
    state.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Options of a session.
pub struct Options {
    /// `host:port`.
    pub addr: String,
    /// Connect and echo timeout.
    pub timeout: Duration,
    /// Speak TLS to this target (`connect --tls`).
    pub tls: Option<crate::tls::TlsTarget>,
}

/// The byte stream a session runs over: the TCP socket itself, or the
/// plaintext end of the TLS pump.
pub(crate) trait Duplex: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl Duplex for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl Duplex for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// Resolves and connects; errors are one line with a hint, plus an exit
/// code.
pub fn connect(addr: &str, timeout: Duration) -> Result<(TcpStream, SocketAddr), (String, i32)> {
    let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err((
                format!("bad address '{addr}': {e} (expected HOST:PORT)"),
                EX_USAGE,
            ))
        }
    };
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => last = Some(e),
        }
    }
    let msg = match last {
        Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to {addr}: connection refused (is echo-lab running? try: systemctl status echo-lab)"
        ),
        Some(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            format!("cannot connect to {addr}: timed out after {}s", timeout.as_secs_f64())
        }
        Some(e) => format!("cannot connect to {addr}: {e}"),
        None => format!("bad address '{addr}': it resolves to nothing"),
    };
    Err((msg, EX_UNAVAILABLE))
}

/// Runs a session; returns the exit code.
pub fn run(opts: &Options) -> i32 {
    let (stream, peer) = match connect(&opts.addr, opts.timeout) {
        Ok(x) => x,
        Err((msg, code)) => {
            eprintln!("echo-labctl: {msg}");
            return code;
        }
    };
    let _ = stream.set_nodelay(true);
    match &opts.tls {
        None => session(stream, peer, opts.timeout),
        Some(target) => match crate::client_tls::start(stream, target, opts.timeout) {
            Ok(plain) => session(plain, peer, opts.timeout),
            Err((msg, code)) => {
                eprintln!("echo-labctl: {msg}");
                code
            }
        },
    }
}

/// The session over `stream`, connected to `peer`; returns the exit code.
fn session<S: Duplex>(stream: S, peer: SocketAddr, timeout: Duration) -> i32 {
    let interactive = io::stdin().is_terminal();
    let saved_tty = interactive.then(save_tty).flatten();
    let state: State = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo-labctl: {e}");
            return 1;
        }
    };
    {
        let state = state.clone();
        std::thread::spawn(move || read_loop(reader, state, interactive.then_some(saved_tty)));
    }
    if interactive {
        eprintln!("Connected to {peer}. Type to echo; 'disconnect' or Ctrl-D leaves.");
        interactive_loop(stream, &state, timeout)
    } else {
        piped_loop(stream, &state, timeout)
    }
}

/// The receiving side; see the module docs.
fn read_loop<S: Duplex>(mut stream: S, state: State, interactive: Option<Option<Termios>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, failed) = match stream.read(&mut buf) {
            Ok(n) => (n, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => (0, Some(End::Error(e.to_string()))),
        };
        // Output and the end of the session are recorded under one lock, so
        // the main thread never sees a closing notice without its end.
        let mut s = lock(&state);
        let mut end = failed;
        if n == 0 && end.is_none() {
            end = Some(End::Eof);
        }
        for item in s.demux.feed(&buf[..n]) {
            match item {
                Item::Echo(b) | Item::Other(b) => {
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Item::Notice(text) => {
                    if interactive.is_some() && !s.waiting {
                        // The prompt is on screen: start a new line.
                        eprintln!();
                    }
                    eprintln!("{NOTICE_PREFIX}{text}");
                    if text == "goodbye" {
                        end = Some(End::Goodbye);
                    } else if text != "shutting down" {
                        end = Some(End::Closed(text));
                    }
                }
            }
        }
        if let Some(e) = &end {
            s.end = Some(e.clone());
        }
        let waiting = s.waiting;
        drop(s);
        state.1.notify_all();
        let Some(end) = end else {
            continue;
        };
        if !waiting {
            // The main thread is at the prompt or reading stdin, not
            // waiting for us: end the session now.
            if let Some(Some(t)) = interactive {
                restore_tty(&t);
            }
            if end == End::Eof {
                eprintln!("echo-labctl: connection closed by the server");
            }
            std::process::exit(end.code());
        }
        return;
    }
}

/// Sends `line` and waits until its echo has arrived (or the session ended).
fn send_and_wait<S: Duplex>(
    stream: &mut S,
    state: &State,
    line: &[u8],
    timeout: Duration,
) -> Option<i32> {
    let echoed = !is_disconnect(line);
    {
        let mut s = lock(state);
        if let Some(end) = &s.end {
            return Some(end.code());
        }
        if echoed {
            s.demux.sent(line);
        }
        s.waiting = true;
    }
    if let Err(e) = stream.write_all(line) {
        eprintln!("echo-labctl: send failed: {e}");
        return Some(1);
    }
    let deadline = Instant::now() + timeout;
    let mut s = lock(state);
    loop {
        if let Some(end) = &s.end {
            if *end == End::Eof && s.demux.outstanding() > 0 {
                eprintln!("echo-labctl: connection closed by the server");
            }
            return Some(end.code());
        }
        if echoed && s.demux.outstanding() == 0 {
            s.waiting = false;
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "echo-labctl: timed out waiting for the echo ({}s)",
                timeout.as_secs_f64()
            );
            return Some(1);
        }
        s = state
            .1
            .wait_timeout(s, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn piped_loop<S: Duplex>(mut stream: S, state: &State, timeout: Duration) -> i32 {
    let stdin = io::stdin();
    let mut line = Vec::new();
    let mut input = stdin.lock();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => {
                let mut s = lock(state);
                if let Some(end) = &s.end {
                    return end.code();
                }
                // From here on the main thread ends the session; closing
                // the socket must not look like the server leaving.
                s.waiting = true;
                break;
            }
            Ok(_) => {
                if let Some(code) = send_and_wait(&mut stream, state, &line, timeout) {
                    return code;
                }
            }
            Err(e) => {
                eprintln!("echo-labctl: reading stdin: {e}");
                return 1;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    0
}

fn interactive_loop<S: Duplex>(mut stream: S, state: &State, timeout: Duration) -> i32 {
    let left = edit_lines("echo> ", &mut |line| {
        send_and_wait(&mut stream, state, line, timeout)
    });
    match left {
        Some(code) => code,
        // Ctrl-D / Ctrl-C: leave cleanly, as `disconnect` would.
        None => send_and_wait(&mut stream, state, b"disconnect\n", timeout).unwrap_or(0),
    }
}

/// The interactive sessions' input (TCP and UDP): lines read with a line
/// editor (editing, history) after `prompt`, each handed with its newline
/// to `each` until it returns an exit status. `None` when the user leaves
/// (Ctrl-D, Ctrl-C); `Some(1)` when the editor fails (said on stderr).
pub(crate) fn edit_lines(prompt: &str, each: &mut dyn FnMut(&[u8]) -> Option<i32>) -> Option<i32> {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("echo-labctl: cannot start the line editor: {e}");
            return Some(1);
        }
    };
    loop {
        match editor.readline(prompt) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    let _ = editor.add_history_entry(text.as_str());
                }
                let mut line = text.into_bytes();
                line.push(b'\n');
                if let Some(code) = each(&line) {
                    return Some(code);
                }
            }
            Err(rustyline::error::ReadlineError::Eof)
            | Err(rustyline::error::ReadlineError::Interrupted) => return None,
            Err(e) => {
                eprintln!("echo-labctl: {e}");
                return Some(1);
            }
        }
    }
}

fn save_tty() -> Option<Termios> {
    tcgetattr(std::io::stdin()).ok()
}

fn restore_tty(t: &Termios) {
    let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_then_notice() {
        let mut d = Demux::default();
        d.sent(b"hello\n");
        assert_eq!(d.feed(b"hel"), vec![Item::Echo(b"hel".to_vec())]);
        assert_eq!(
            d.feed(b"lo\n[echo-lab] idle for 5s, closing\r\n"),
            vec![
                Item::Echo(b"lo\n".to_vec()),
                Item::Notice("idle for 5s, closing".into())
            ]
        );
    }

    #[test]
    fn notice_split_and_after_partial_line() {
        let mut d = Demux::default();
        d.sent(b"hi");
        assert_eq!(d.feed(b"hi\r"), vec![Item::Echo(b"hi".to_vec())]);
        assert_eq!(d.feed(b"\n[echo-"), vec![]);
        assert_eq!(
            d.feed(b"lab] goodbye\r\n"),
            vec![Item::Notice("goodbye".into())]
        );
    }

    #[test]
    fn notice_while_echo_outstanding_and_foreign_bytes() {
        let mut d = Demux::default();
        d.sent(b"abc\n");
        assert_eq!(
            d.feed(b"[echo-lab] shutting down\r\nabc\n"),
            vec![
                Item::Notice("shutting down".into()),
                Item::Echo(b"abc\n".to_vec())
            ]
        );
        assert_eq!(d.feed(b"zzz\n"), vec![Item::Other(b"zzz\n".to_vec())]);
    }
}
