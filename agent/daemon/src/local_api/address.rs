//! Where the local API listens: a TCP address on this host, or a Unix socket
//! (`unix:/run/tern/api.sock`) that only processes allowed by the file's permissions reach.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// `--listen-api`: `HOST:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ApiAddress {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ApiAddress::Tcp(addr) => Some(*addr),
            ApiAddress::Unix(_) => None,
        }
    }

    /// Binds the address. A Unix socket's stale file from an earlier run is replaced, and its
    /// directory made.
    pub async fn bind(&self) -> std::io::Result<ApiListener> {
        match self {
            ApiAddress::Tcp(addr) => TcpListener::bind(addr).await.map(ApiListener::Tcp),
            ApiAddress::Unix(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                remove_stale_socket(path)?;
                UnixListener::bind(path).map(|l| ApiListener::Unix(l, path.clone()))
            }
        }
    }
}

/// Removes `path` if it is a socket nobody listens on; refuses to touch anything else.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another process serves on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

impl FromStr for ApiAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, as in unix:/run/tern/api.sock".into());
            }
            return Ok(ApiAddress::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(ApiAddress::Tcp)
            .map_err(|_| format!("`{text}` is neither HOST:PORT (an IP address) nor unix:PATH"))
    }
}

impl fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddress::Tcp(addr) => write!(f, "{addr}"),
            ApiAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Serialize for ApiAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ApiAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A bound local API.
#[derive(Debug)]
pub enum ApiListener {
    Tcp(TcpListener),
    /// The listener and its socket file, removed when the API stops.
    Unix(UnixListener, PathBuf),
}

/// One accepted connection.
#[derive(Debug)]
pub enum ApiStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ApiListener {
    /// Where it listens (a TCP port 0 resolved).
    pub fn local_address(&self) -> std::io::Result<ApiAddress> {
        match self {
            ApiListener::Tcp(l) => l.local_addr().map(ApiAddress::Tcp),
            ApiListener::Unix(_, path) => Ok(ApiAddress::Unix(path.clone())),
        }
    }

    pub async fn accept(&self) -> std::io::Result<ApiStream> {
        match self {
            ApiListener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                // Answers are small and go out whole: no Nagle delay.
                let _ = stream.set_nodelay(true);
                Ok(ApiStream::Tcp(stream))
            }
            ApiListener::Unix(l, _) => l.accept().await.map(|(s, _)| ApiStream::Unix(s)),
        }
    }
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        if let ApiListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses_and_writes_them_back() {
        for text in ["127.0.0.1:7480", "[::1]:0", "unix:/run/tern/api.sock"] {
            let address: ApiAddress = text.parse().expect(text);
            assert_eq!(address.to_string(), text);
        }
        assert_eq!(
            "unix:/a".parse::<ApiAddress>(),
            Ok(ApiAddress::Unix("/a".into()))
        );
        for bad in ["unix:", "localhost:7480", "7480", ""] {
            assert!(bad.parse::<ApiAddress>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let address = ApiAddress::Unix(dir.path().join("run/api.sock"));
        let first = address.bind().await.expect("bind");
        assert!(
            address.bind().await.is_err(),
            "a socket another listener serves is not taken over"
        );
        drop(first);
        assert!(!dir.path().join("run/api.sock").exists(), "removed at stop");
        // A socket file left behind, as after a crash.
        drop(
            std::os::unix::net::UnixListener::bind(dir.path().join("run/api.sock")).expect("bind"),
        );
        let again = address.bind().await.expect("the stale socket is replaced");
        drop(again);
        assert!(!dir.path().join("run/api.sock").exists());
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        let file = ApiAddress::Unix(dir.path().join("file"));
        assert!(file.bind().await.is_err(), "a regular file is left alone");
    }
}
