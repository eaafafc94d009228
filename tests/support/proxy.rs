//! A TCP proxy of the tests' own between a client and the apiserver (both on 127.0.0.1),
//! to cut or slow one client's connection while others' stay as they are.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes it on.
    Pass,
    /// Closes every connection and refuses new ones (a partition).
    Cut,
    /// Passes it on, each chunk this much later (a slow link or apiserver).
    Delay(Duration),
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where clients connect (127.0.0.1).
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, watching) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *watching.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let watching = watching.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, watching.clone()) => {}
                        _ = pipe(sr, cw, watching.clone()) => {}
                        _ = cut(watching) => {}
                    }
                });
            }
        });
        Proxy { port, mode, task }
    }

    /// Changes what it does (a cut closes the connections open now).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves once the mode is `Cut`.
async fn cut(mut mode: watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
}

/// Copies `from` to `to`, delaying each chunk as the mode says.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = *mode.borrow();
        if let Mode::Delay(d) = now {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A copy of the kubeconfig at `from` whose server is `127.0.0.1:port` (the apiserver's
/// certificate names 127.0.0.1, whatever the port), written to `to`.
pub fn kubeconfig_through(from: &std::path::Path, port: u16, to: &std::path::Path) {
    let text = std::fs::read_to_string(from).expect("read kubeconfig");
    let out: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("server: https://127.0.0.1:") {
                format!("    server: https://127.0.0.1:{port}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(to, out + "\n").expect("write kubeconfig");
}

/// The port of the apiserver a kubeconfig names.
pub fn apiserver_port(kubeconfig: &std::path::Path) -> u16 {
    let text = std::fs::read_to_string(kubeconfig).expect("read kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("a server on 127.0.0.1 in the kubeconfig")
}
