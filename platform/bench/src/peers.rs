//! What `bench gateway` can measure besides its own load generator and the gateway: `wrk`
//! (an external load generator, `--wrk`) and nginx as a reverse proxy in front of the same
//! upstream (`--nginx`), a peer measured in the same run. Both come from Debian's packages
//! (`apt-get install wrk nginx-light`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Stats;

/// `wrk` driving POSTs of one JSON body.
pub struct Wrk {
    script: PathBuf,
}

impl Wrk {
    /// Writes the request script into `dir`; fails when `wrk` is not installed.
    pub fn new(dir: &Path) -> Result<Self, String> {
        let ok = std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok();
        if !ok {
            return Err("wrk is not installed (apt-get install wrk)".into());
        }
        Ok(Wrk {
            script: dir.join("post.lua"),
        })
    }

    /// Runs `conc` connections against `url` for `dur`, posting `body`.
    pub async fn run(
        &self,
        url: &str,
        body: &str,
        conc: usize,
        dur: Duration,
    ) -> Result<Stats, String> {
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            lua_string(body)
        );
        std::fs::write(&self.script, lua).map_err(|e| e.to_string())?;
        let out = tokio::process::Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{conc}"),
                &format!("-d{}s", dur.as_secs().max(1)),
                "--latency",
                "-s",
            ])
            .arg(&self.script)
            .arg(url)
            .output()
            .await
            .map_err(|e| format!("wrk: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))
    }
}

/// A Lua string literal of `s`.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Requests/s, the 50th and 99th percentile latencies and the failures from wrk's
/// `--latency` report.
fn parse_wrk(text: &str) -> Option<Stats> {
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let rps = after("Requests/sec:")?.parse::<f64>().ok()?;
    let p50 = duration_us(after("50%")?)?;
    let p99 = duration_us(after("99%")?)?;
    let non_2xx = after("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let socket = after("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|p| p.split_whitespace().nth(1)?.parse::<usize>().ok())
            .sum()
    });
    Some(Stats {
        rps,
        p50_us: p50,
        p99_us: p99,
        ttfb_p50_us: f64::NAN,
        errors: non_2xx + socket,
    })
}

/// `812.00us`, `1.23ms`, `2.00s` in microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let (n, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

/// nginx as a reverse proxy with upstream keep-alive, streaming unbuffered, writing an
/// access log (buffered, as a request log is): the same job as the gateway's, minus the
/// routing, keys, limits and metrics.
pub struct Nginx {
    child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Nginx {
    /// Starts it in `dir` in front of `upstream` (`host:port`).
    pub async fn start(dir: &Path, upstream: &str) -> Result<Self, String> {
        let port = crate::free_port().await?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log {d}/access.log combined buffer=256k flush=1s;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             upstream up {{ server {upstream}; keepalive 256; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
             proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            // Its workers must not hold the benchmark's output open.
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start nginx: {e} (apt-get install nginx-light)"))?;
        let pid = child.id().ok_or("nginx exited")?;
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(Nginx {
                    child,
                    pid,
                    url: format!("http://{addr}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "nginx did not start; see {}",
            dir.join("error.log").display()
        ))
    }

    /// The CPU of the master and its workers so far, in milliseconds.
    pub fn cpu_ms(&self) -> Option<f64> {
        let mut total = crate::cpu_ms(self.pid)?;
        for child in children(self.pid) {
            total += crate::cpu_ms(child).unwrap_or(0.0);
        }
        Some(total)
    }

    /// Stops it as its docs say (SIGTERM: the master ends its workers), then makes sure.
    pub async fn stop(mut self) {
        let workers = children(self.pid);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        for w in workers {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &w.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let report = "Running 4s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.00us  100.00us   3.00ms   90.00%
  Latency Distribution
     50%  387.00us
     75%  450.00us
     90%  520.00us
     99%    1.02ms
  180000 requests in 4.00s, 50.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  45000.12
Transfer/sec:     12.50MB
";
        let s = parse_wrk(report).unwrap();
        assert!((s.rps - 45000.12).abs() < 1e-6);
        assert_eq!(s.p50_us, 387.0);
        assert_eq!(s.p99_us, 1020.0);
        assert_eq!(s.errors, 8);
        assert!(parse_wrk("nothing").is_none());
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(lua_string("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
