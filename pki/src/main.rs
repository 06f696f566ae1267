//! `skiff-pki`: makes the certificates of a Skiff cluster (see the README's production layout).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use skiff_pki::{EtcdMember, Spec, generate};

/// Makes a cluster CA, an etcd CA, each etcd member's serving and peer certificates, the API
/// server's etcd client certificate and its serving certificate, into one directory (0700, keys
/// 0600). Never overwrites: an existing file of the set is an error and nothing is written.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Where to write them (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// An etcd member: NAME=HOST[,HOST...] (DNS names or IP addresses clients and peers use).
    /// Repeat for each member.
    #[arg(long = "etcd-member", required = true, value_parser = parse_member)]
    etcd_members: Vec<EtcdMember>,
    /// A DNS name or IP address of the API server, for its serving certificate. Repeat for
    /// each.
    #[arg(long = "api-host", required = true)]
    api_hosts: Vec<String>,
    /// Days the leaf certificates are valid (the CAs get ten times as long).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    days: u64,
}

fn parse_member(s: &str) -> Result<EtcdMember, String> {
    let (name, hosts) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=HOST[,HOST...]"))?;
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if hosts.is_empty() {
        return Err(format!("etcd member {name:?} needs at least one host"));
    }
    Ok(EtcdMember {
        name: name.to_owned(),
        hosts,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = Spec {
        etcd_members: args.etcd_members,
        api_hosts: args.api_hosts,
        validity: Duration::from_secs(args.days * 86_400),
    };
    match generate(&args.dir, &spec) {
        Ok(files) => {
            println!(
                "wrote the cluster's certificates to {}",
                files.dir.display()
            );
            for m in &spec.etcd_members {
                println!("etcd {}: {}", m.name, files.etcd_flags(&m.name).join(" "));
            }
            println!(
                "skiff-apiserver: {} {}",
                files.apiserver_etcd_flags().join(" "),
                files.apiserver_tls_flags().join(" ")
            );
            println!("clients (skiffctl caCert): {}", files.ca.cert.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = format!("skiff-pki: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
