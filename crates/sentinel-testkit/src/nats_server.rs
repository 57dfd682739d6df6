//! A NATS server of a test's own: Debian's `nats-server` run as a child process on a free
//! port of 127.0.0.1, with JetStream storing under a directory of the test. It can be killed
//! (SIGKILL, like a crash) and started again on the same port and store, to test outages and
//! what survives them.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the server (`/usr/sbin`, often not on a user's PATH).
const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The server binary: `nats-server` from PATH, else Debian's.
fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|path| path.is_file()))
}

/// Whether a server can be started here.
pub fn available() -> bool {
    binary().is_some()
}

/// A running (or killed) server.
pub struct NatsServer {
    port: u16,
    store_dir: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server with JetStream, storing under `dir` (panics if it does not start: check
    /// [`available`] first).
    pub fn start(dir: &Path) -> NatsServer {
        NatsServer::start_with(dir, &["-js"])
    }

    /// Starts a server with `args` added to the address, port and store directory (`-js` for
    /// JetStream, `--auth <token>`, `--tls …`).
    pub fn start_with(dir: &Path, args: &[&str]) -> NatsServer {
        let store_dir = dir.join("nats-store");
        std::fs::create_dir_all(&store_dir).expect("create the NATS store directory");
        let mut server = NatsServer {
            port: free_port(),
            store_dir,
            log: dir.join("nats-server.log"),
            extra_args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and store directory, and waits until it
    /// accepts connections. Kills the running one first, if any.
    pub fn restart(&mut self) {
        self.kill();
        let binary = binary().expect("nats-server is not installed (Debian: apt-get install nats-server)");
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store_dir)
            .arg("-l")
            .arg(&self.log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("start nats-server");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited with {status} while starting:\n{}", self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server did not listen on {} within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The server's log so far (for a failing test's message).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port the kernel just handed out, free again once the probe is closed.
fn free_port() -> u16 {
    let probe = TcpListener::bind(("127.0.0.1", 0)).expect("bind a probe socket");
    probe.local_addr().expect("the probe's address").port()
}
