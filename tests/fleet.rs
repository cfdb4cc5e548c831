//! A fleet of three echo-lab instances behind a real HAProxy (Debian's),
//! each instance in a network namespace of its own with its own address
//! on a bridge, as a load balancer sees backends on other machines.
//!
//! Layout (all made here, all removed at the end, also on failure — the
//! [`Fleet`] guard kills the processes and deletes the namespaces):
//!
//! ```text
//!  netns P-lb: bridge br0 10.77.0.1 (HAProxy's side) + 10.77.0.100 (the test clients)
//!     HAProxy  :7000 -> echo backend (PROXY v2 to :7100), :7001 -> who backend (PROXY v2 to :7101)
//!              option httpchk GET /readyz on :9707, inter 500ms fall 2 rise 2
//!  netns P-e1/e2/e3: eth0 10.77.0.11/12/13 (veth into br0), one echo-lab each
//! ```
//!
//! HAProxy runs with `retries 0` and without `option redispatch`, so a
//! client whose connection HAProxy cannot place (the backend refused it)
//! sees it closed: nothing masks a stopping instance that closed its
//! listeners while HAProxy still sent it clients. (Run with
//! `shutdown_delay = "0s"` instead, the rolling restart here failed 876
//! sessions that way; with `"2s"`, none.)
//!
//! No traffic leaves the namespaces: the test's clients run on threads
//! that entered P-lb (`setns`), the daemons and HAProxy were started in
//! theirs with `ip netns exec`; the control sockets and HAProxy's stats
//! socket are files, reachable from here.
//!
//! One test, in phases, because the set-up is the expensive part: the
//! distribution of `echo-labctl who --count 300`, the session logs naming
//! the real client, a rolling restart under a reconnecting load
//! (`shutdown_delay = "2s"`), `ready off` on one instance, and `kill -9` of
//! one. It prints its figures (run with `--nocapture` to see them). Needs
//! root for the namespaces; without, it says `SKIPPED` and why.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

/// HAProxy's address (and the bridge's), the test clients' address, and
/// instance `i`'s (1-based).
const LB: &str = "10.77.0.1";
const CLIENT: &str = "10.77.0.100";
fn instance_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}
const ECHO_FRONT: u16 = 7000;
const WHO_FRONT: u16 = 7001;
/// HAProxy's check interval and how many failed checks mark a server down.
const INTER: Duration = Duration::from_millis(500);
const FALL: u32 = 2;
/// "Within its check interval": `FALL` checks, one interval for the
/// check under way, and slack for a loaded 2-core machine.
const MARK_DOWN_WITHIN: Duration = Duration::from_millis(500 * (FALL as u64 + 1) + 1500);
const N: usize = 3;

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = run_with_input(cmd, b"", IO_TIMEOUT * 6);
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// The namespaces, the processes in them and their files; everything is
/// killed and deleted on drop.
struct Fleet {
    prefix: String,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    instances: Vec<Option<Child>>,
    haproxy: Option<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let children = self
            .instances
            .iter_mut()
            .flatten()
            .chain(self.haproxy.as_mut());
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("fleet: cleaning up: {e}");
            }
        }
    }
}

impl Fleet {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Makes the namespaces and the bridge; `Err` if namespaces cannot be
    /// made here (the caller skips).
    fn make() -> Result<Fleet, String> {
        if euid() != 0 {
            return Err("not root".into());
        }
        let mut fleet = Fleet {
            prefix: format!("elf{}", std::process::id() % 100_000),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            namespaces: Vec::new(),
            instances: (0..N).map(|_| None).collect(),
            haproxy: None,
        };
        let lb = fleet.ns("lb");
        ip(&["netns", "add", &lb])?;
        fleet.namespaces.push(lb.clone());
        ip(&["-n", &lb, "link", "set", "lo", "up"])?;
        ip(&["-n", &lb, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lb, "addr", "add", &format!("{LB}/24"), "dev", "br0"])?;
        ip(&[
            "-n",
            &lb,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &lb, "link", "set", "br0", "up"])?;
        for i in 1..=N {
            let ns = fleet.ns(&format!("e{i}"));
            ip(&["netns", "add", &ns])?;
            fleet.namespaces.push(ns.clone());
            let veth = format!("v{i}");
            ip(&[
                "-n", &lb, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &lb, "link", "set", &veth, "master", "br0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", instance_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(fleet)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn control(&self, i: usize) -> PathBuf {
        self.path(&format!("e{i}.sock"))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.path(&format!("e{i}.log"))
    }

    fn write_config(&self, i: usize) -> PathBuf {
        let addr = instance_ip(i);
        let text = format!(
            "host = \"{addr}\"\nport = 7007\npool_size = 1\ndrain_timeout = 10\n\
             shutdown_delay = \"2s\"\ninstance = \"e{i}\"\nmetrics_listen = \"{addr}:9707\"\n\
             control_socket = {control:?}\n\
             [[listen]]\naddress = \"{addr}:7100\"\nproxy_protocol = true\nproxy_trusted = [\"{LB}\"]\n\
             [[listen]]\naddress = \"{addr}:7101\"\nmode = \"who\"\nproxy_protocol = true\nproxy_trusted = [\"{LB}\"]\n\
             [log]\ntarget = \"file\"\npath = {log:?}\n",
            control = self.control(i),
            log = self.log(i),
        );
        let path = self.path(&format!("e{i}.toml"));
        std::fs::write(&path, text).expect("write instance config");
        path
    }

    /// Starts instance `i` in its namespace and waits until it answers on
    /// its control socket with its own pid.
    fn start(&mut self, i: usize) {
        let config = self.write_config(i);
        let stderr = File::create(self.path(&format!("e{i}.stderr"))).expect("stderr file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("e{i}"))])
            .arg(ECHO_LAB)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start echo-lab in its namespace");
        let pid = child.id();
        self.instances[i - 1] = Some(child);
        wait_until(START_TIMEOUT, "the instance answers status", || {
            self.status(i).is_some_and(|s| s["pid"] == pid)
        });
    }

    fn status(&self, i: usize) -> Option<serde_json::Value> {
        let out = labctl(&["--socket", path_str(&self.control(i)), "status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn start_haproxy(&mut self) {
        let servers = |port: u16| {
            (1..=N)
                .map(|i| format!("  server e{i} {}:{port}\n", instance_ip(i)))
                .collect::<String>()
        };
        let inter = INTER.as_millis();
        let cfg = format!(
            "global\n  stats socket {stats} mode 600 level admin\n  maxconn 4000\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
             \x20 retries 0\n\
             frontend echo\n  bind {LB}:{ECHO_FRONT}\n  default_backend echo\n\
             frontend who\n  bind {LB}:{WHO_FRONT}\n  default_backend who\n\
             backend echo\n  balance roundrobin\n  option httpchk GET /readyz\n\
             \x20 default-server check port 9707 inter {inter}ms fall {FALL} rise 2 send-proxy-v2 source {LB}\n{echo}\
             backend who\n  balance roundrobin\n  option httpchk GET /readyz\n\
             \x20 default-server check port 9707 inter {inter}ms fall {FALL} rise 2 send-proxy-v2 source {LB}\n{who}",
            stats = self.path("haproxy.sock").display(),
            echo = servers(7100),
            who = servers(7101),
        );
        let path = self.path("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb"), "haproxy", "-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.path("haproxy.stderr")).expect("stderr file"))
            .spawn()
            .expect("haproxy (Debian package haproxy; tests/run.sh installs it)");
        self.haproxy = Some(child);
        for i in 1..=N {
            self.wait_state(i, "UP", START_TIMEOUT);
        }
    }

    /// HAProxy's view of server `e{i}` in both backends (`UP`, `DOWN`...).
    fn server_states(&self, i: usize) -> Vec<String> {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.path("haproxy.sock")) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.write_all(b"show stat\n");
        let mut csv = String::new();
        let _ = s.read_to_string(&mut csv);
        let mut lines = csv.lines();
        let head: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| head.iter().position(|h| *h == name);
        let (Some(sv), Some(st)) = (col("svname"), col("status")) else {
            return Vec::new();
        };
        let me = format!("e{i}");
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.get(sv) == Some(&me.as_str()))
            .filter_map(|f| f.get(st).map(|s| s.to_string()))
            .collect()
    }

    /// Waits until both backends show `e{i}` in `state` (its first word);
    /// returns how long that took.
    fn wait_state(&self, i: usize, state: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        wait_until(within, &format!("haproxy marks e{i} {state}"), || {
            let s = self.server_states(i);
            s.len() == 2 && s.iter().all(|x| x.split_whitespace().next() == Some(state))
        });
        t0.elapsed()
    }

    fn instance_pid(&self, i: usize) -> u32 {
        self.instances[i - 1].as_ref().map_or(0, Child::id)
    }

    /// `echo-labctl who LB:WHO_FRONT --count n` from the client namespace:
    /// sessions per instance, and failures.
    fn who_count(&self, n: u64) -> (Vec<(String, u64)>, u64) {
        let out = run_with_input(
            Command::new("ip")
                .args(["netns", "exec", &self.ns("lb"), ECHO_LABCTL, "who"])
                .args([&format!("{LB}:{WHO_FRONT}"), "--count", &n.to_string()]),
            b"",
            IO_TIMEOUT * 6,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("fleet: who --count {n}:\n{text}");
        let mut per = Vec::new();
        let mut failed = u64::MAX;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["(failed)", n, _] => failed = n.parse().unwrap_or(u64::MAX),
                [name, n, _] => per.push((name.to_string(), n.parse().unwrap_or(0))),
                _ => {}
            }
        }
        per.sort();
        (per, failed)
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn labctl(args: &[&str]) -> Output {
    run_with_input(Command::new(ECHO_LABCTL).args(args), b"", IO_TIMEOUT * 2)
}

/// Runs `f` on a thread that has entered network namespace `ns`: every
/// socket it makes lives there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on an open namespace file of ours, for this thread
        // only (CLONE_NEWNET may be entered by one thread of a process).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// What the reconnecting load saw.
#[derive(Debug, Default, Clone)]
struct Tally {
    sessions: u64,
    round_trips: u64,
    connect_failed: u64,
    round_trips_failed: u64,
    told_shutting_down: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.sessions += o.sessions;
        self.round_trips += o.round_trips;
        self.connect_failed += o.connect_failed;
        self.round_trips_failed += o.round_trips_failed;
        self.told_shutting_down += o.told_shutting_down;
        if self.first_error.is_none() {
            self.first_error = o.first_error.clone();
        }
    }

    fn fail(&mut self, what: String) {
        self.first_error.get_or_insert(what);
    }
}

/// Sessions of `per_session` line round trips through the balancer, one
/// after another until `stop`; a session told `shutting down` ends there
/// (counted) and the next one starts.
fn reconnecting_load(stop: Arc<AtomicBool>, front: SocketAddr, id: usize) -> Tally {
    let src: IpAddr = CLIENT.parse().expect("client address");
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let s = match try_connect_from(src, front) {
            Ok(s) => s,
            Err(e) => {
                t.connect_failed += 1;
                t.fail(format!("connect: {e}"));
                continue;
            }
        };
        t.sessions += 1;
        session(s, id, t.sessions, &mut t);
    }
    t
}

fn session(mut s: TcpStream, id: usize, n: u64, t: &mut Tally) {
    let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
    for j in 0..20 {
        let line = format!("load {id} session {n} line {j}\n");
        if let Err(e) = s.write_all(line.as_bytes()) {
            t.round_trips_failed += 1;
            t.fail(format!("write: {e}"));
            return;
        }
        let mut got = String::new();
        match reader.read_line(&mut got) {
            Ok(_) if got == line => t.round_trips += 1,
            Ok(_) if got.starts_with("[echo-lab] shutting down") => {
                t.told_shutting_down += 1;
                return;
            }
            Ok(_) => {
                t.round_trips_failed += 1;
                t.fail(format!("sent {line:?}, got {got:?}"));
                return;
            }
            Err(e) => {
                t.round_trips_failed += 1;
                t.fail(format!("read: {e}"));
                return;
            }
        }
    }
}

fn start_load(fleet: &Fleet, threads: usize) -> (Arc<AtomicBool>, Vec<JoinHandle<Tally>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let front: SocketAddr = format!("{LB}:{ECHO_FRONT}").parse().expect("front");
    let handles = (0..threads)
        .map(|id| {
            let stop = stop.clone();
            in_netns(&fleet.ns("lb"), move || reconnecting_load(stop, front, id))
        })
        .collect();
    (stop, handles)
}

fn stop_load(stop: &AtomicBool, handles: Vec<JoinHandle<Tally>>) -> Tally {
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for h in handles {
        total.add(&h.join().expect("load thread"));
    }
    total
}

#[test]
fn three_instances_behind_haproxy_share_the_load_restart_in_turn_and_leave_rotation() {
    let mut fleet = match Fleet::make() {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces: {why}");
            return;
        }
    };
    for i in 1..=N {
        fleet.start(i);
    }
    fleet.start_haproxy();

    // 1. The distribution, through HAProxy.
    let (per, failed) = fleet.who_count(300);
    assert_eq!(failed, 0);
    let names: Vec<&str> = per.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["e1", "e2", "e3"], "{per:?}");
    for (name, n) in &per {
        assert!(
            (80..=120).contains(n),
            "{name} answered {n} of 300: {per:?}"
        );
    }

    // 2. Rolling restart under a reconnecting load.
    let (stop, load) = start_load(&fleet, 4);
    wait_until(IO_TIMEOUT, "the load is flowing", || {
        (1..=N).all(|i| {
            fleet
                .status(i)
                .is_some_and(|s| s["stats"]["total"].as_u64() > Some(0))
        })
    });
    let mut restarts = Vec::new();
    for i in 1..=N {
        let t0 = Instant::now();
        let pid = fleet.instance_pid(i);
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
        let down = fleet.wait_state(i, "DOWN", MARK_DOWN_WITHIN);
        let child = fleet.instances[i - 1].as_mut().expect("running instance");
        let status = wait_child(child, IO_TIMEOUT * 3).expect("the instance exits after its drain");
        assert!(status.success(), "e{i} exited {status:?}");
        let exited = t0.elapsed();
        fleet.start(i);
        let up = fleet.wait_state(i, "UP", START_TIMEOUT);
        restarts.push((i, down, exited, t0.elapsed(), up));
    }
    let t = stop_load(&stop, load);
    for (i, down, exited, total, up) in &restarts {
        eprintln!(
            "fleet: e{i}: marked DOWN {:.2}s after SIGTERM, exited at {:.2}s, UP again at {:.2}s ({:.2}s after its start)",
            down.as_secs_f64(),
            exited.as_secs_f64(),
            total.as_secs_f64(),
            up.as_secs_f64()
        );
    }
    eprintln!("fleet: rolling restart under load: {t:?}");
    assert_eq!(t.connect_failed, 0, "{t:?}");
    assert_eq!(t.round_trips_failed, 0, "{t:?}");
    assert!(
        t.sessions > 30 && t.round_trips > 600,
        "too little load to mean anything: {t:?}"
    );

    // 3. Each instance's log names the real client, never HAProxy.
    for i in 1..=N {
        let log = std::fs::read_to_string(fleet.log(i)).expect("instance log");
        let echo_sessions: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("listener={}:7100 ", instance_ip(i))))
            .collect();
        assert!(
            !echo_sessions.is_empty(),
            "e{i} logged no echo session:\n{log}"
        );
        for l in &echo_sessions {
            assert!(l.contains(&format!("client={CLIENT}:")), "e{i}: {l}");
        }
    }

    // 4. ready off: out of rotation within the check interval, open
    //    sessions go on.
    let front: SocketAddr = format!("{LB}:{ECHO_FRONT}").parse().expect("front");
    let src: IpAddr = CLIENT.parse().expect("client");
    let mut open = in_netns(&fleet.ns("lb"), move || {
        (0..6)
            .map(|_| try_connect_from(src, front).expect("connect through haproxy"))
            .collect::<Vec<_>>()
    })
    .join()
    .expect("connect thread");
    for (k, s) in open.iter_mut().enumerate() {
        round_trip(s, format!("open {k}\n").as_bytes());
    }
    let active = |f: &Fleet| f.status(2).expect("e2 status")["stats"]["active"].as_u64();
    let total = |f: &Fleet| f.status(2).expect("e2 status")["stats"]["total"].as_u64();
    assert!(active(&fleet) > Some(0), "no session landed on e2");
    let out = labctl(&["--socket", path_str(&fleet.control(2)), "ready", "off"]);
    assert!(out.status.success(), "{out:?}");
    let out_after = fleet.wait_state(2, "DOWN", MARK_DOWN_WITHIN);
    eprintln!(
        "fleet: ready off: e2 marked DOWN after {:.2}s",
        out_after.as_secs_f64()
    );
    let accepted = total(&fleet);
    let (per, failed) = fleet.who_count(30);
    assert_eq!(failed, 0);
    assert!(
        per.iter().all(|(n, _)| n != "e2"),
        "e2 still gets sessions: {per:?}"
    );
    assert_eq!(
        total(&fleet),
        accepted,
        "e2 accepted a session while out of rotation"
    );
    // Its open sessions (and every other) go on.
    for (k, s) in open.iter_mut().enumerate() {
        round_trip(s, format!("still open {k}\n").as_bytes());
    }
    assert!(active(&fleet) > Some(0), "e2's sessions were closed");
    drop(open);
    assert!(
        labctl(&["--socket", path_str(&fleet.control(2)), "ready", "on"])
            .status
            .success()
    );
    fleet.wait_state(2, "UP", START_TIMEOUT);

    // 5. kill -9: marked down within the check interval; the others serve.
    let pid = fleet.instance_pid(3);
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    let (per_during, failed_during) = fleet.who_count(30);
    let down = fleet.wait_state(3, "DOWN", MARK_DOWN_WITHIN);
    let marked = t0.elapsed();
    eprintln!(
        "fleet: kill -9 e3: marked DOWN {:.2}s after the kill; during detection {failed_during} of 30 who sessions failed ({per_during:?}); wait for DOWN took {:.2}s",
        marked.as_secs_f64(),
        down.as_secs_f64()
    );
    let (per, failed) = fleet.who_count(60);
    assert_eq!(failed, 0);
    let names: Vec<&str> = per.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["e1", "e2"], "{per:?}");
}
