//! nginx (Debian's package) serving an Image repository's published tree as static files:
//! `metadata/` and `targets/` from the repository directory over HTTPS, with Range requests,
//! as any web server or CDN in front of object storage would. Our `image-repo serve` then only
//! takes uploads (and re-signs before expiry, writing files nginx serves).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{ChildGuard, spawn};

/// A running nginx serving one repository.
#[derive(Debug)]
pub struct Nginx {
    _process: ChildGuard,
    /// Its base URL (`https://127.0.0.1:PORT`).
    pub url: String,
    dir: PathBuf,
}

/// A port nobody listens on now (nginx cannot be given port 0 and say which it took).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Nginx {
    /// Serves `repo`'s `metadata/` and `targets/` over HTTPS with `cert` and `key`, from a
    /// configuration, logs and temporary files in `dir`. Waits (bounded) until it accepts
    /// connections.
    pub fn serve(repo: &Path, cert: &Path, key: &Path, dir: &Path) -> Self {
        assert!(
            Command::new("nginx")
                .arg("-v")
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs nginx (Debian's nginx package, which .ci/run installs)"
        );
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx's directory");
        let port = free_port();
        let d = dir.display();
        // As root (CI), workers would drop to `nobody`, who cannot read a private test
        // directory: they stay root (nginx ignores the directive for other users).
        let config = format!(
            r#"daemon off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ application/json json; }}
    default_type application/octet-stream;
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /metadata/ {{ root {repo}; }}
        location /targets/ {{ root {repo}; }}
        location / {{ return 404; }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            repo = repo.display(),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx.conf");
        let mut command = Command::new("nginx");
        command
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c"])
            .arg(&conf);
        let process = spawn(command);
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nginx did not listen on {addr}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            _process: process,
            url: format!("https://{addr}"),
            dir: dir.to_path_buf(),
        }
    }

    /// The requests it served so far (its access log).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}
