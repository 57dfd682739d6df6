//! `sentinel serve` as a child process for the binary's tests: started on
//! ephemeral ports of 127.0.0.1, signalled, asked for its status, and killed
//! when dropped. Test files include it with `mod served;`.

// Each test file uses its own part.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Served {
    pub child: Child,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

impl Served {
    /// Starts `sentinel serve --data-dir DATA_DIR`, its warnings on the test's stderr.
    pub fn start(data_dir: &Path) -> Served {
        Served::start_with(data_dir, &[], None)
    }

    /// Starts `sentinel serve --data-dir DATA_DIR ARGS…`, logging at debug level
    /// to `log` when given; returns once it printed the addresses it listens on.
    pub fn start_with(data_dir: &Path, args: &[&str], log: Option<&Path>) -> Served {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
        command
            .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::piped());
        match log {
            Some(log) => command.env("RUST_LOG", "debug").stderr(std::fs::File::create(log).unwrap()),
            None => command.env("RUST_LOG", "warn"),
        };
        let mut child = command.spawn().expect("start sentinel serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = |prefix: &str| -> SocketAddr {
            let line = lines.next().expect("a start-up line").unwrap();
            line.strip_prefix(prefix).unwrap_or_else(|| panic!("unexpected line {line:?}")).parse().unwrap()
        };
        let tcp = address("tcp listening on ");
        let http = address("http listening on ");
        Served { child, tcp, http }
    }

    /// Sends the signal `name` (`-HUP`, `-TERM`…) to the server.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET /status` on the HTTP listener, as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let mut stream = tokio::net::TcpStream::connect(self.http).await.unwrap();
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        serde_json::from_str(body).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
