//! `make key` and `make revoke`: API keys in the table of the stack the environment names
//! (the running `make dev`; a local emulator with `AWS_ENDPOINT_URL`; AWS with `TABLE_NAME`).
//!
//! `keys create --tenant NAME [--rate PER_MINUTE] [--budget USD|none]` prints the new key
//! once (only its hash is stored) and its id. Rate and budget are the tenant's, shared by
//! all its keys: given, they change the tenant's limits; left out, they stay as they are
//! (60 a minute and no budget for a new tenant). `keys revoke KEY_ID` revokes a key
//! (within 60 s everywhere).

use std::path::Path;
use std::process::ExitCode;

use imagegen_shared::domain::money::usd;
use imagegen_shared::domain::tenancy::KeyId;
use imagegen_shared::domain::tenancy::LimitsUpdate;
use imagegen_shared::domain::time::Timestamp;
use imagegen_shared::ports::accounts::AccountStore;
use local_stack::ops::keys::{
    Budget, DEV_STATE_FILE, NewKey, apply_limits, limits_change, target_table,
};

const USAGE: &str =
    "usage: keys create --tenant NAME [--rate PER_MINUTE] [--budget USD] | keys revoke KEY_ID";
const DEV_TABLE: &str = "imagegen-local";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_create(args: &[String]) -> Result<LimitsUpdate, String> {
    let (mut tenant, mut rate, mut budget) = (None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .filter(|v| !v.is_empty())
            .ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tenant" => tenant = Some(value.clone()),
            "--rate" => {
                rate = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--rate `{value}` is not a whole number"))?,
                )
            }
            "--budget" => budget = Some(Budget::parse(value)?),
            other => return Err(format!("unknown option `{other}`\n{USAGE}")),
        }
    }
    let tenant = tenant.ok_or(format!("--tenant is required\n{USAGE}"))?;
    limits_change(&tenant, rate, budget)
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let state = Path::new(DEV_STATE_FILE);
    match args.first().map(String::as_str) {
        Some("create") => {
            let change = parse_create(&args[1..])?;
            let new = NewKey::new(None, &change.tenant)?;
            let (table, label) = target_table(env, state, DEV_TABLE).await?;
            let failed = |e: String| {
                format!("{e} (in {label}; if that is a stopped `make dev`, start it again)")
            };
            let limits = apply_limits(&table, &change).await.map_err(failed)?;
            new.store(&table).await.map_err(failed)?;
            let budget = limits
                .monthly_budget
                .map_or("none".to_owned(), |m| format!("${}", usd(m)));
            println!(
                "tenant    {} (all its keys: {} submits a minute, monthly budget {budget})",
                limits.tenant, limits.rate_per_minute
            );
            println!("key id    {}", new.record.id);
            println!("api key   {}", new.key.expose());
            eprintln!("stored in {label}; the key is shown only now: keep it somewhere safe");
            Ok(())
        }
        Some("revoke") => {
            let raw = args.get(1).ok_or(USAGE)?;
            let id = KeyId::parse(raw).map_err(|e| format!("`{raw}`: {e}"))?;
            let (table, label) = target_table(env, state, DEV_TABLE).await?;
            let now = Timestamp::from_system(std::time::SystemTime::now());
            if table
                .revoke_key(&id, now)
                .await
                .map_err(|e| e.to_string())?
            {
                println!("revoked   {id} ({label}); refused everywhere within 60 s");
                Ok(())
            } else {
                Err(format!("no key {id} in {label}"))
            }
        }
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keys: {err}");
            ExitCode::FAILURE
        }
    }
}
