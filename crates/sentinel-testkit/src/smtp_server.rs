//! A local SMTP server on 127.0.0.1: Debian's `python3-aiosmtpd` (a real SMTP implementation)
//! run as a child process, offering STARTTLS with a certificate of the test CA and refusing
//! mail before it (`require_starttls`), writing each message it accepts to a file of a
//! directory. Tests read the messages back as the relay received them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certificates::TestCa;

/// The Python interpreter that has Debian's aiosmtpd.
const PYTHON: &str = "/usr/bin/python3";

/// The server: aiosmtpd's controller with STARTTLS required, a handler that saves messages.
const SERVER: &str = r#"
import socket, ssl, sys, time, pathlib
from aiosmtpd.controller import Controller

certificate, key, outbox = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])

class Save:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Save.count += 1
        text = "X-Envelope-From: %s\nX-Envelope-To: %s\nX-Was-Tls: %s\n" % (
            envelope.mail_from, ",".join(envelope.rcpt_tos), session.ssl is not None)
        (outbox / ("%04d.eml" % Save.count)).write_bytes(text.encode() + envelope.content)
        return "250 Message accepted"

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(certificate, key)
# The controller checks its port by connecting to it, so it needs a real one: a free port
# chosen by the kernel.
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
controller = Controller(Save(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True)
controller.start()
print("port", port, flush=True)
while True:
    time.sleep(3600)
"#;

/// Whether the local SMTP server can run here: Debian's python3 with aiosmtpd.
pub fn available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A running SMTP server.
pub struct SmtpServer {
    pub port: u16,
    /// The CA that signed its certificate (for `ca_file`).
    pub ca_file: PathBuf,
    outbox: PathBuf,
    child: Child,
}

impl SmtpServer {
    /// Starts the server with files under `dir` (panics if it does not start: check
    /// [`available`] first).
    pub fn start(dir: &Path) -> SmtpServer {
        let ca = TestCa::new("Sentinel test SMTP CA");
        let ca_file = ca.write(&dir.join("smtp-ca.pem"));
        let files = ca.server("127.0.0.1", &dir.join("smtp-cert.pem"), &dir.join("smtp-key.pem"));
        let outbox = dir.join("smtp-outbox");
        std::fs::create_dir_all(&outbox).expect("create the outbox");
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SERVER).expect("write the server script");
        // Its log (a refused handshake prints a traceback) goes to a file, read on failure.
        let log = dir.join("smtp-server.log");
        let log_file = std::fs::File::create(&log).expect("create the SMTP server's log");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .arg(&files.certificate)
            .arg(&files.key)
            .arg(&outbox)
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start the SMTP server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read the port");
        let port =
            line.trim().strip_prefix("port ").and_then(|port| port.parse().ok()).unwrap_or_else(|| {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the SMTP server did not say its port: {line:?}\n{log}")
            });
        SmtpServer { port, ca_file, outbox, child }
    }

    /// The messages received so far, oldest first, with the envelope in `X-Envelope-*` headers
    /// and whether the session was TLS in `X-Was-Tls`.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.outbox)
            .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|path| std::fs::read_to_string(path).ok()).collect()
    }

    /// Waits until at least `count` messages arrived (or panics after `within`).
    pub fn wait_for(&self, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} messages after {within:?}, expected {count}",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
