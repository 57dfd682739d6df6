//! `sentinel serve` (and `sentinel agent`) as child processes of a test: started with the
//! binary cargo built for the test (`env!("CARGO_BIN_EXE_sentinel")`, which only the binary's
//! own tests can name, hence the parameter), on ephemeral ports of 127.0.0.1, signalled, asked
//! for their status, and killed when the test ends, however it ends.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http_client::ApiClient;

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct TestProcess(Child);

impl TestProcess {
    /// Spawns `command`; panics when it cannot start.
    pub fn spawn(command: &mut Command) -> TestProcess {
        TestProcess(command.spawn().unwrap_or_else(|error| panic!("start {command:?}: {error}")))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The child's standard output, once, when it was spawned with `Stdio::piped()`.
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.stdout.take()
    }

    /// The child's standard input, once, when it was spawned with `Stdio::piped()`.
    pub fn stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.0.stdin.take()
    }

    /// Sends the signal `name` (`-HUP`, `-TERM`, `-KILL`…).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.0.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {name} {}: {status}", self.0.id());
    }

    /// Waits for the process to exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A last change to the command before it is spawned.
type Prepare = Box<dyn FnOnce(&mut Command)>;

/// How to start `sentinel serve`: built up, then [`ServeCommand::start`].
pub struct ServeCommand {
    binary: PathBuf,
    data_dir: PathBuf,
    config: Option<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
    prepare: Option<Prepare>,
}

impl ServeCommand {
    /// `BINARY serve --tcp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir DATA_DIR`,
    /// logging warnings to the test's stderr.
    pub fn new(binary: impl AsRef<Path>, data_dir: impl AsRef<Path>) -> ServeCommand {
        ServeCommand {
            binary: binary.as_ref().to_owned(),
            data_dir: data_dir.as_ref().to_owned(),
            config: None,
            args: Vec::new(),
            envs: Vec::new(),
            log: None,
            prepare: None,
        }
    }

    /// A configuration file with this TOML, written as `sentinel.toml` in the data directory.
    pub fn config(mut self, toml: &str) -> ServeCommand {
        self.config = Some(toml.to_owned());
        self
    }

    /// More arguments after `serve`'s own.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> ServeCommand {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable of the process.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> ServeCommand {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Logs at debug level to `path` instead of warnings to the test's stderr.
    pub fn log_to(mut self, path: impl AsRef<Path>) -> ServeCommand {
        self.log = Some(path.as_ref().to_owned());
        self
    }

    /// Applies `prepare` to the command last (a `pre_exec` hook, say).
    pub fn prepare(mut self, prepare: impl FnOnce(&mut Command) + 'static) -> ServeCommand {
        self.prepare = Some(Box::new(prepare));
        self
    }

    /// Starts the server; returns once it printed the addresses it listens on.
    pub fn start(self) -> ServeProcess {
        let mut command = Command::new(&self.binary);
        if let Some(toml) = &self.config {
            std::fs::create_dir_all(&self.data_dir).expect("create the data directory");
            let path = self.data_dir.join("sentinel.toml");
            std::fs::write(&path, toml).expect("write sentinel.toml");
            command.arg("--config").arg(path);
        }
        command
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.args)
            .stdout(Stdio::piped());
        match &self.log {
            Some(log) => {
                let file = std::fs::File::create(log).expect("create the log file");
                command.env("RUST_LOG", "debug").stderr(file)
            }
            None => command.env("RUST_LOG", "warn"),
        };
        command.envs(self.envs.iter().map(|(name, value)| (name, value)));
        if let Some(prepare) = self.prepare {
            prepare(&mut command);
        }
        let mut process = TestProcess::spawn(&mut command);
        let stdout = process.0.stdout.take().expect("piped stdout");
        let (mut tcp, mut tcp_tls, mut http) = (None, None, None);
        // The HTTP address comes last.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("tcp listening on ") {
                tcp = Some(address.parse().expect("the tcp address"));
            } else if let Some(address) = line.strip_prefix("tcp tls listening on ") {
                tcp_tls = Some(address.parse().expect("the tcp tls address"));
            } else if let Some(address) = line.strip_prefix("http listening on ") {
                http = Some(address.parse().expect("the http address"));
                break;
            }
        }
        let (Some(tcp), Some(http)) = (tcp, http) else {
            let status = process.wait_exit(Duration::from_secs(10));
            panic!("sentinel serve ended ({status}) before printing both addresses");
        };
        ServeProcess { process, tcp, tcp_tls, http, data_dir: self.data_dir }
    }
}

/// A running `sentinel serve`.
pub struct ServeProcess {
    pub process: TestProcess,
    /// The malware protocol's plain listener.
    pub tcp: SocketAddr,
    /// The malware protocol's TLS listener, when `--tcp-tls-listen` was given.
    pub tcp_tls: Option<SocketAddr>,
    /// The HTTP listener (status, metrics, network API).
    pub http: SocketAddr,
    pub data_dir: PathBuf,
}

impl ServeProcess {
    /// Starts `sentinel serve` (see [`ServeCommand::new`]) with nothing more.
    pub fn start(binary: impl AsRef<Path>, data_dir: impl AsRef<Path>) -> ServeProcess {
        ServeCommand::new(binary, data_dir).start()
    }

    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.process.wait_exit(within)
    }

    /// The token `serve` wrote to `DATA_DIR/admin.token` when it made the first admin token;
    /// panics when there is none.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir.join("admin.token");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
        text.trim().to_owned()
    }

    /// A client of the HTTP listener sending the admin token.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(self.http, Some(self.admin_token()))
    }

    /// `GET /status` as JSON, with the admin token; panics unless it answers 200.
    pub async fn status(&self) -> serde_json::Value {
        let answer = self.api().send("GET", "/status", None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }
}

/// A new API token named `name` with `scopes` (comma-separated), made by `binary token create`
/// on `data_dir` as an operator would, while the server runs; panics if the command fails.
pub fn create_token(binary: impl AsRef<Path>, data_dir: &Path, name: &str, scopes: &str) -> String {
    let output = Command::new(binary.as_ref())
        .args(["token", "create", "--name", name, "--scope", scopes, "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sentinel token create");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("a token is text").trim().to_owned()
}

/// Network settings with which a test trains a model in seconds: small models (100 training
/// rows, 50 trees, LOF and the SVM on 300 rows) and results written every 50 ms.
pub const QUICK_NETWORK: &str = "
[network.model]
min_training_rows = 100
isolation_forest_trees = 50
lof_max_rows = 300
svm_max_rows = 300

[network.storage]
flush_interval = \"50ms\"
";
