//! A private Postfix for the TLS and SMTP AUTH tests: Debian's `postfix`
//! with Cyrus SASL (`sasl2-bin`), started as its own instance (its own
//! configuration, queue and data directories in a temporary directory,
//! listening on free ports of 127.0.0.1 only) and stopped when dropped.
//! Its certificates come from a throwaway CA made with `openssl` for each
//! instance; it delivers every recipient into one Maildir that the test
//! reads, so a test asserts on a delivered message, not on a "250".
//!
//! Four `smtpd` services:
//! - `submission`: STARTTLS required, AUTH (PLAIN, LOGIN) over TLS only and
//!   required to send (port 587 in production);
//! - `smtps`: implicit TLS (wrapper mode) with AUTH required (465);
//! - `plain`: no STARTTLS, no AUTH, relays for 127.0.0.1 (a local relay);
//! - `wrong_name`: STARTTLS with a certificate for `mail.other.example`
//!   from the same CA.
//!
//! Without the tools (or not as root, which `postfix start` needs) the
//! tests print `skipped: …`, unless `EMAIL2FA_TEST_POSTFIX=1` (CI), where
//! that, or a Postfix that does not start, fails.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The SASL user every instance knows.
pub const USER: &str = "shop";

/// A running private Postfix.
pub struct Postfix {
    dir: tempfile::TempDir,
    /// STARTTLS required, AUTH over TLS.
    pub submission: u16,
    /// Implicit TLS, AUTH.
    pub smtps: u16,
    /// No STARTTLS, no AUTH.
    pub plain: u16,
    /// STARTTLS with a certificate for another host name.
    pub wrong_name: u16,
    /// The CA that signed the server's certificates (PEM).
    pub ca_file: PathBuf,
    /// Another CA, unrelated to the server's (PEM).
    pub other_ca_file: PathBuf,
    /// The SASL password of [`USER`].
    pub password: String,
}

/// Why Postfix cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    for tool in [
        "/usr/sbin/postfix",
        "/usr/sbin/saslpasswd2",
        "/usr/bin/openssl",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (apt-get install -y postfix sasl2-bin openssl)"
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok();
    let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    (!root).then(|| "postfix start needs root".to_string())
}

impl Postfix {
    /// Starts an instance, or `None` (with a note) when the tools are
    /// missing and `EMAIL2FA_TEST_POSTFIX` is not `1`.
    pub fn start() -> Option<Self> {
        if let Some(why) = missing_tools() {
            assert!(
                std::env::var("EMAIL2FA_TEST_POSTFIX").as_deref() != Ok("1"),
                "EMAIL2FA_TEST_POSTFIX=1 but {why}"
            );
            eprintln!("skipped: {why}, so this test against a real Postfix did not run");
            return None;
        }
        Some(Self::start_here())
    }

    fn start_here() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Postfix's daemons run as `postfix` and must reach the directories.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let root = dir.path();
        for sub in ["conf/sasl", "queue", "data", "mail", "tls"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        make_certificates(&root.join("tls"));
        let password = format!("pw-{}", ulid::Ulid::generate());
        make_sasl_user(root, &password);
        let ports = free_ports::<4>();
        std::fs::write(root.join("conf/main.cf"), main_cf(root)).expect("main.cf");
        std::fs::write(root.join("conf/master.cf"), master_cf(root, ports)).expect("master.cf");
        sh(
            "chown",
            &["-R", "postfix:postfix", &path_str(&root.join("data"))],
        );
        sh(
            "chown",
            &["-R", "postfix:postfix", &path_str(&root.join("mail"))],
        );
        let started = Command::new("/usr/sbin/postfix")
            .args(["-c", &path_str(&root.join("conf")), "start"])
            .output()
            .expect("run postfix start");
        let postfix = Self {
            submission: ports[0],
            smtps: ports[1],
            plain: ports[2],
            wrong_name: ports[3],
            ca_file: root.join("tls/ca.pem"),
            other_ca_file: root.join("tls/other-ca.pem"),
            password,
            dir,
        };
        assert!(
            started.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&started.stdout),
            String::from_utf8_lossy(&started.stderr),
            postfix.log()
        );
        postfix.wait_until_listening();
        postfix
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.submission, self.smtps, self.plain, self.wrong_name] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "Postfix does not listen on {port}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Postfix's log so far (`maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// The messages delivered so far, as stored in the Maildir.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("mail/inbox/new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(new)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|path| std::fs::read(path).ok())
            .collect()
    }

    /// Waits until `n` messages were delivered (or 20 s passed); returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() > deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let conf = path_str(&self.dir.path().join("conf"));
        let _ = Command::new("/usr/sbin/postfix")
            .args(["-c", &conf, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// Runs a command that must succeed.
fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `n` ports free on 127.0.0.1 right now (also for the private Redis).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("addr").port())
}

/// A CA, a server certificate for `localhost` and one for
/// `mail.other.example` signed by it, and an unrelated second CA. P-256
/// keys: quick to make. smtpd reads its key as root before it drops
/// privileges, so the files stay private to root.
fn make_certificates(tls: &Path) {
    let at = |name: &str| path_str(&tls.join(name));
    let openssl = |args: &[&str]| sh("openssl", args);
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=email2fa test CA"),
        ("other-ca", "/CN=another test CA"),
    ] {
        let (key, pem) = (at(&format!("{name}.key")), at(&format!("{name}.pem")));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(new_key);
        args.extend(["-keyout", &key, "-out", &pem]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&args);
    }
    for (name, host) in [("server", "localhost"), ("other", "mail.other.example")] {
        let file = |ext: &str| at(&format!("{name}.{ext}"));
        let subject = format!("/CN={host}");
        let mut args = vec!["req", "-subj", &subject];
        args.extend(new_key);
        let (key, csr, pem, ext) = (file("key"), file("csr"), file("pem"), file("ext"));
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(&args);
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
        )
        .expect("ext");
        let (ca, ca_key) = (at("ca.pem"), at("ca.key"));
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        let chain = [
            std::fs::read(&key).expect("key"),
            std::fs::read(&pem).expect("cert"),
        ];
        std::fs::write(file("chain.pem"), chain.concat()).expect("chain");
    }
}

/// The SASL database with [`USER`] and Cyrus's `smtpd.conf` pointing at it.
fn make_sasl_user(root: &Path, password: &str) {
    let db = root.join("sasldb2");
    let mut child = Command::new("/usr/sbin/saslpasswd2")
        .args(["-p", "-c", "-f", &path_str(&db), "-u", "localhost", USER])
        .stdin(Stdio::piped())
        .spawn()
        .expect("saslpasswd2");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(password.as_bytes()).expect("password");
    }
    assert!(child.wait().expect("saslpasswd2").success());
    sh("chown", &["postfix", &path_str(&db)]);
    let config = format!(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {}\n",
        db.display()
    );
    // Debian's Postfix reads `{config_directory}/sasl/smtpd.conf`; others
    // read `cyrus_sasl_config_path`, which points at the same directory.
    std::fs::write(root.join("conf/sasl/smtpd.conf"), config).expect("smtpd.conf");
}

fn main_cf(root: &Path) -> String {
    let r = root.display();
    format!(
        "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = localhost
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = {r}/maillog
maillog_file_prefixes = {r}
virtual_mailbox_domains = static:all
virtual_mailbox_base = {r}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_transport = virtual
smtputf8_enable = yes
smtpd_tls_chain_files = {r}/tls/server.chain.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {r}/conf/sasl
smtpd_sasl_local_domain = localhost
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
",
        uid = id("-u", "postfix"),
        gid = id("-g", "postfix"),
    )
}

fn id(flag: &str, user: &str) -> String {
    let output = Command::new("id").args([flag, user]).output().expect("id");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn master_cf(root: &Path, [submission, smtps, plain, wrong_name]: [u16; 4]) -> String {
    let r = root.display();
    format!(
        "127.0.0.1:{submission} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o mynetworks=
127.0.0.1:{smtps} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o mynetworks=
127.0.0.1:{plain} inet n - n - - smtpd
  -o smtpd_tls_security_level=none
127.0.0.1:{wrong_name} inet n - n - - smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_chain_files={r}/tls/other.chain.pem
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"
    )
}
