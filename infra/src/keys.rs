//! API keys for the local stack and for `make key` / `make revoke` (README, "Callers"):
//! where the stack is, and storing keys (only their hashes) in its table.

use std::path::Path;

use imagegen_shared::aws::{AwsClients, DynamoRecords};
use imagegen_shared::cost::micros_from_usd;
use imagegen_shared::ports::AccountStore;
use imagegen_shared::record::to_millis;
use imagegen_shared::tenancy::{ApiKey, DEFAULT_RATE_PER_MINUTE, KeyRecord, TenantId};
use serde::{Deserialize, Serialize};

/// Where a running `make dev` says it is, for `make key`, `make revoke` and `make demo`.
/// Written at `ready`, removed on exit; local only (it holds the dev key).
pub const DEV_STATE_FILE: &str = ".dev-stack.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevState {
    pub aws_endpoint: String,
    pub table_name: String,
    pub base_url: String,
    /// The key `make dev` created or was given first, for `make demo`.
    pub api_key: String,
}

impl DevState {
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())
    }

    pub fn read(path: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }
}

/// One entry of `DEV_API_KEYS`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevKey {
    pub tenant: String,
    pub key: String,
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
}

/// A key to store: checked in full before anything is written.
pub struct NewKey {
    pub key: ApiKey,
    pub record: KeyRecord,
}

impl NewKey {
    /// `key` for `tenant` (a new random key when `None`), `rate` submits a minute (default
    /// 60), an optional monthly budget in dollars.
    pub fn new(
        key: Option<&str>,
        tenant: &str,
        rate: Option<u32>,
        budget_usd: Option<f64>,
    ) -> Result<Self, String> {
        let key = match key {
            Some(key) => ApiKey::parse(key).map_err(|e| e.to_string())?,
            None => ApiKey::generate(),
        };
        let tenant = TenantId::parse(tenant).map_err(|e| format!("tenant `{tenant}`: {e}"))?;
        let budget = budget_usd
            .map(|usd| micros_from_usd(usd).ok_or("monthly budget: not an amount of dollars"))
            .transpose()?;
        let now = to_millis(std::time::SystemTime::now());
        let record = KeyRecord::new(
            &key,
            tenant,
            rate.unwrap_or(DEFAULT_RATE_PER_MINUTE),
            budget,
            now,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self { key, record })
    }

    /// Stores the key's record. The same key stored before for the same tenant is fine (a
    /// restarted `make dev` on a kept table); for another tenant it is an error.
    pub async fn store<S: AccountStore>(&self, store: &S) -> Result<(), String> {
        match store.create_key(&self.record).await {
            Ok(()) => Ok(()),
            Err(err) => match store.get_key(&self.record.id).await {
                Ok(Some(existing)) if existing.tenant == self.record.tenant => Ok(()),
                Ok(Some(_)) => Err(format!(
                    "key {} already belongs to another tenant",
                    self.record.id
                )),
                _ => Err(err.to_string()),
            },
        }
    }
}

/// Parses `DEV_API_KEYS`: a JSON list of `{"tenant", "key", "rate_per_minute"?,
/// "monthly_budget_usd"?}`.
pub fn parse_dev_keys(json: &str) -> Result<Vec<NewKey>, String> {
    let entries: Vec<DevKey> =
        serde_json::from_str(json).map_err(|e| format!("DEV_API_KEYS: {e}"))?;
    entries
        .iter()
        .map(|e| {
            NewKey::new(
                Some(&e.key),
                &e.tenant,
                e.rate_per_minute,
                e.monthly_budget_usd,
            )
            .map_err(|err| format!("DEV_API_KEYS, tenant `{}`: {err}", e.tenant))
        })
        .collect()
}

/// The table `make key` and `make revoke` act on: `AWS_ENDPOINT_URL` (+`TABLE_NAME`, default
/// the dev table) for a local emulator; `TABLE_NAME` alone for AWS with the usual
/// credentials; otherwise the running `make dev`.
pub async fn target_table(
    env: impl Fn(&str) -> Option<String>,
    state_file: &Path,
    dev_table: &str,
) -> Result<(DynamoRecords, String), String> {
    let (aws, table, label) = match (env("AWS_ENDPOINT_URL"), env("TABLE_NAME")) {
        (Some(endpoint), table) => {
            let table = table.unwrap_or_else(|| dev_table.to_owned());
            let label = format!("{endpoint}, table {table}");
            (AwsClients::local(&endpoint).await, table, label)
        }
        (None, Some(table)) => {
            let label = format!("AWS, table {table}");
            (AwsClients::from_env().await, table, label)
        }
        (None, None) => {
            let state = DevState::read(state_file).ok_or(
                "no stack named: run `make dev` first, or set TABLE_NAME (AWS) or AWS_ENDPOINT_URL",
            )?;
            let label = format!("the local stack at {}", state.base_url);
            (
                AwsClients::local(&state.aws_endpoint).await,
                state.table_name,
                label,
            )
        }
    };
    Ok((DynamoRecords::new(aws.dynamodb, table), label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_keys_are_checked_before_anything_is_stored() {
        let keys = parse_dev_keys(
            r#"[{"tenant": "acme", "key": "acme-local-key-0001"},
                {"tenant": "beta", "key": "beta-local-key-0002", "rate_per_minute": 5, "monthly_budget_usd": 2.5}]"#,
        )
        .unwrap();
        assert_eq!(keys[0].record.rate_per_minute, 60);
        assert_eq!(keys[0].record.monthly_budget, None);
        assert_eq!(keys[1].record.rate_per_minute, 5);
        assert_eq!(keys[1].record.monthly_budget, Some(2_500_000));
        for bad in [
            r#"[{"tenant": "Acme!", "key": "acme-local-key-0001"}]"#,
            r#"[{"tenant": "acme", "key": "short"}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "rate_per_minute": 0}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "monthly_budget_usd": -1}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "rate": 5}]"#,
            r#"{"tenant": "acme"}"#,
        ] {
            assert!(parse_dev_keys(bad).is_err(), "{bad}");
        }
    }
}
