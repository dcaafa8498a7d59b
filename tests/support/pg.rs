//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory, a free
//! loopback port, `listen_addresses=127.0.0.1`, the Unix socket inside the directory, trust
//! authentication, `pg_ctl start -w`; stopped (`pg_ctl stop -m immediate`) and removed when
//! dropped. Never a system service, never a fixed port.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster runs
//! as the `postgres` user (`runuser`) and its directory is handed to that user. The binaries
//! are found on PATH or under `/usr/lib/postgresql/<version>/bin` (Debian's layout); `.ci/run`
//! installs the `postgresql` package when neither has `initdb`, so no test skips for lack of
//! it: a missing PostgreSQL fails the test with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pg {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// Server settings beyond the defaults (TLS).
    extra: String,
}

/// The directory holding `initdb` and `pg_ctl`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("SIDEKEY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    // The newest version first (the directory names are version numbers).
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(p) = found.pop() {
        return p;
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return d;
            }
        }
    }
    panic!("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): `apt-get install -y postgresql` (.ci/run does)");
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("addr").port()
}

impl Pg {
    /// Creates and starts a cluster with a database `sidekey`.
    pub fn start() -> Self {
        Self::start_opts(None)
    }

    /// [`Pg::start`] with TLS on (`ssl=on`) with this certificate chain and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_opts(Some((cert_pem, key_pem)))
    }

    fn start_opts(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        let as_postgres = rustix_is_root();
        let dir = tempfile::Builder::new()
            .prefix("sidekey-pg-")
            .tempdir()
            .expect("tempdir");
        let mut extra = String::new();
        if let Some((cert, key)) = tls {
            let (c, k) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&c, cert).expect("write cert");
            std::fs::write(&k, key).expect("write key");
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                c.display(),
                k.display()
            );
        }
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the cluster directory failed");
        }
        let mut pg = Self {
            dir: Some(dir),
            bin,
            port: 0,
            as_postgres,
            extra,
        };
        let data = pg.data();
        let out = pg
            .cmd("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A port may be taken between the probe and the start: try a few.
        for _ in 0..5 {
            pg.port = free_port();
            let opts = format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=200{}",
                pg.port,
                pg.dir().display(),
                pg.extra
            );
            let out = pg
                .cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-w", "-t", "60", "-l"])
                .arg(pg.dir().join("log"))
                .args(["-o", &opts, "start"])
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                pg.psql("CREATE DATABASE sidekey");
                return pg;
            }
        }
        let log = std::fs::read_to_string(pg.dir().join("log")).unwrap_or_default();
        panic!("pg_ctl start failed: {log}");
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn cmd(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// The store URL for sidekey (`--store`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/sidekey", self.port)
    }

    /// Runs SQL with psql; panics on failure; returns stdout (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .cmd("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d"])
            .arg(if sql.starts_with("CREATE DATABASE") {
                "postgres"
            } else {
                "sidekey"
            })
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`Pg::psql`] in database `db` (another database of the same cluster).
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = self
            .cmd("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pg_dump` of the database (data and schema), as text.
    pub fn dump(&self) -> String {
        let out = self
            .cmd("pg_dump")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "sidekey"])
            .output()
            .expect("run pg_dump");
        assert!(out.status.success(), "pg_dump failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (fast shutdown); the data stays.
    pub fn stop(&self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"])
            .output();
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=200{}",
            self.port,
            self.dir().display(),
            self.extra
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir().join("log"))
            .args(["-o", &opts, "start"])
            .output()
            .expect("run pg_ctl");
        assert!(out.status.success(), "pg_ctl restart failed");
    }
}

fn rustix_is_root() -> bool {
    // `id -u` rather than a libc call: the tests stay free of unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}
