//! Patroni's `etcd3.{username,password,cacert,cert,key}` and `protocol: https` against a real etcd
//! serving TLS only, asking clients for a certificate, with authentication enabled (a root user and
//! a user whose role may read and write `/service/` only).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Identity, Permission, TlsOptions};
use praetor_config::{DcsEndpoints, EtcdSecurity};
use praetor_dcs::{DcsIdentity, Expect};
use praetor_harness::{etcd_binary, free_port, wait_for, Process, WorkDir};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in `dir`.
fn certificates(dir: &Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
  -days 2 -subj "/CN=etcd test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n' > server.ext
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $who.key -out $who.csr \
    -subj "/CN=$who" 2>/dev/null
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 \
    -extfile $who.ext 2>/dev/null
done
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn identity(member: &str) -> DcsIdentity {
    DcsIdentity {
        namespace: "/service/".into(),
        scope: "secured".into(),
        member: Some(member.into()),
        ttl_secs: 10,
        request_timeout_secs: 5,
    }
}

fn tls(dir: &Path) -> TlsOptions {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("client.pem"), read("client.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_tls_client_certificates_and_authentication() {
    let work = WorkDir::new("etcd-secured").unwrap();
    let dir = work.path().to_path_buf();
    certificates(&dir);
    let (port, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(etcd_binary());
    cmd.args(["--name", "n1", "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}")])
        .arg("--cert-file")
        .arg(dir.join("server.pem"))
        .arg("--key-file")
        .arg(dir.join("server.key"))
        .arg("--trusted-ca-file")
        .arg(dir.join("ca.pem"))
        .args(["--client-cert-auth", "--log-level", "warn"]);
    let _etcd = Process::spawn("etcd", cmd, &dir.join("etcd.log")).unwrap();

    // Set up authentication as an operator does: root, then a user whose role covers /service/.
    let admin = wait_for("etcd over TLS", Duration::from_secs(60), || async {
        let mut c = Client::connect(
            [url.as_str()],
            Some(ConnectOptions::new().with_tls(tls(&dir))),
        )
        .await
        .map_err(|e| e.to_string())?;
        c.status().await.map_err(|e| e.to_string())?;
        Ok(c)
    })
    .await
    .unwrap();
    let mut admin = admin;
    admin.user_add("root", "root-pass", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("praetor").await.unwrap();
    admin
        .role_grant_permission("praetor", Permission::read_write("/service/").with_prefix())
        .await
        .unwrap();
    admin
        .user_add("praetor", "praetor-pass", None)
        .await
        .unwrap();
    admin.user_grant_role("praetor", "praetor").await.unwrap();
    admin.auth_enable().await.unwrap();

    // The configuration as Patroni's users write it.
    let yaml = format!(
        "scope: secured\netcd3:\n  hosts: 127.0.0.1:{port}\n  protocol: https\n  cacert: {d}/ca.pem\n  cert: {d}/client.pem\n  key: {d}/client.key\n  username: praetor\n  password: praetor-pass\n",
        d = dir.display()
    );
    let config = praetor_config::parse_str(&yaml).unwrap().config;
    let (_, endpoints) = config.validate_dcs_client().unwrap();
    assert_eq!(endpoints, DcsEndpoints::Etcd(vec![url.clone()]));
    let security = config.etcd_security();
    let dcs = praetor_dcs::connect_secured(&endpoints, identity("pg1"), &security)
        .await
        .expect("connects with TLS, a client certificate and a password");
    dcs.set_config(&serde_json::json!({"ttl": 10}), Expect::Absent)
        .await
        .expect("writes under /service/");
    let cluster = dcs.load().await.expect("reads");
    assert_eq!(cluster.config.unwrap().value["ttl"], 10);

    // A silent member first in the list (it takes connections and never answers, as a hung host
    // does): etcd-client authenticates while it connects, which must not hold up the client, so
    // it connects, authenticates and works through the next member within the request timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let past_silent = DcsEndpoints::Etcd(vec![silent_url, url.clone()]);
    let dcs = praetor_dcs::connect_secured(&past_silent, identity("pg5"), &security)
        .await
        .expect("connects and authenticates past a silent member");
    let cluster = dcs.load().await.expect("reads past a silent member");
    assert_eq!(cluster.config.unwrap().value["ttl"], 10);
    assert!(dcs.acquire_leader().await.expect("a lease and a lock"));
    drop(silent);

    // Without the password, etcd refuses; without TLS, nothing answers.
    let anonymous = EtcdSecurity {
        user: None,
        ..security.clone()
    };
    let refused = match praetor_dcs::connect_secured(&endpoints, identity("pg2"), &anonymous).await
    {
        Ok(d) => d.load().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(refused.is_err(), "etcd served a client without credentials");
    let wrong = EtcdSecurity {
        user: Some(("praetor".into(), "wrong".into())),
        ..security.clone()
    };
    assert!(
        praetor_dcs::connect_secured(&endpoints, identity("pg3"), &wrong)
            .await
            .is_err(),
        "a wrong password is refused"
    );
    let plain = DcsEndpoints::Etcd(vec![format!("http://127.0.0.1:{port}")]);
    let no_tls = EtcdSecurity {
        cacert: None,
        identity: None,
        ..security.clone()
    };
    assert!(
        praetor_dcs::connect_secured(&plain, identity("pg4"), &no_tls)
            .await
            .is_err()
    );
}
