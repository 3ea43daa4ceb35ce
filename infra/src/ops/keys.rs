//! API keys for the local stack and for `make key` / `make revoke` (README, "Callers,
//! limits and cost"): where the stack is, and storing keys (only their hashes) in its table.

use std::path::Path;

use imagegen_shared::adapters::aws::{AwsClients, DynamoRecords};
use imagegen_shared::domain::money::micros_from_usd;
use imagegen_shared::domain::tenancy::{
    ApiKey, DEFAULT_RATE_PER_MINUTE, KeyRecord, LimitsUpdate, TenantId, TenantLimits,
};
use imagegen_shared::domain::time::Timestamp;
use imagegen_shared::ports::accounts::AccountStore;
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
    /// The loopback `host:port` callbacks may reach (`make demo CALLBACK=1` listens there).
    #[serde(default)]
    pub callback_host: Option<String>,
}

impl DevState {
    /// Writes the file readable by its owner only (it holds a key), replacing any earlier
    /// one whole, whatever that one's mode.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        std::fs::rename(&temporary, path)
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

/// A tenant's monthly budget as asked for on a command line or in `DEV_API_KEYS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Usd(u64),
    /// `none`: remove the budget.
    Unlimited,
}

impl Budget {
    /// Dollars (`25`, `0.5`) or `none`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.eq_ignore_ascii_case("none") {
            return Ok(Self::Unlimited);
        }
        text.parse::<f64>()
            .ok()
            .and_then(micros_from_usd)
            .map(Self::Usd)
            .ok_or(format!(
                "budget `{text}` is not an amount of dollars (or `none`)"
            ))
    }

    pub fn micros(self) -> Option<u64> {
        match self {
            Self::Usd(micros) => Some(micros),
            Self::Unlimited => None,
        }
    }
}

/// A tenant's limits as asked for on a command line: what is not given stays as stored
/// (the default rate and no budget for a new tenant).
pub fn limits_change(
    tenant: &str,
    rate: Option<u32>,
    budget: Option<Budget>,
) -> Result<LimitsUpdate, String> {
    let tenant = TenantId::parse(tenant).map_err(|e| format!("tenant `{tenant}`: {e}"))?;
    LimitsUpdate::new(tenant, rate, budget.map(Budget::micros)).map_err(|e| e.to_string())
}

/// Applies a change of a tenant's limits; returns the limits now in force for its keys.
pub async fn apply_limits<S: AccountStore>(
    store: &S,
    change: &LimitsUpdate,
) -> Result<TenantLimits, String> {
    store.update_tenant(change).await.map_err(|e| e.to_string())
}

/// A key to store for a tenant.
pub struct NewKey {
    pub key: ApiKey,
    pub record: KeyRecord,
}

impl NewKey {
    /// `key` for `tenant` (a new random key when `None`).
    pub fn new(key: Option<&str>, tenant: &TenantId) -> Result<Self, String> {
        let key = match key {
            Some(key) => ApiKey::parse(key).map_err(|e| e.to_string())?,
            None => ApiKey::generate(),
        };
        let now = Timestamp::from_system(std::time::SystemTime::now());
        let record = KeyRecord::new(&key, tenant.clone(), now);
        Ok(Self { key, record })
    }

    /// Stores the key's record. The same key stored before for the same tenant is fine (a
    /// restarted `make dev` on a kept table) unless it was revoked; for another tenant it
    /// is an error.
    pub async fn store<S: AccountStore>(&self, store: &S) -> Result<(), String> {
        match store.create_key(&self.record).await {
            Ok(()) => Ok(()),
            Err(err) => match store.get_key(&self.record.id).await {
                Ok(Some(existing)) if existing.record.tenant != self.record.tenant => Err(format!(
                    "key {} already belongs to another tenant",
                    self.record.id
                )),
                Ok(Some(existing)) if existing.record.revoked_at.is_some() => Err(format!(
                    "key {} was revoked; choose another",
                    self.record.id
                )),
                Ok(Some(_)) => Ok(()),
                _ => Err(err.to_string()),
            },
        }
    }
}

/// `DEV_API_KEYS`, checked in full before anything is written: the tenants' limits and the
/// keys.
pub struct DevKeys {
    pub limits: Vec<LimitsUpdate>,
    pub keys: Vec<NewKey>,
}

/// Parses `DEV_API_KEYS`: a JSON list of `{"tenant", "key", "rate_per_minute"?,
/// "monthly_budget_usd"?}`. Limits are the tenant's: entries of one tenant may each give
/// them or not, but never two different values; a tenant none of whose entries gives one
/// gets the default rate and no budget.
pub fn parse_dev_keys(json: &str) -> Result<DevKeys, String> {
    let entries: Vec<DevKey> =
        serde_json::from_str(json).map_err(|e| format!("DEV_API_KEYS: {e}"))?;
    // Per tenant, in order of first appearance: (rate, budget) as given.
    let mut given: Vec<(TenantId, Option<u32>, Option<Budget>)> = Vec::new();
    let mut keys = Vec::new();
    for entry in &entries {
        let context = |err: String| format!("DEV_API_KEYS, tenant `{}`: {err}", entry.tenant);
        let budget = entry
            .monthly_budget_usd
            .map(|usd| {
                micros_from_usd(usd)
                    .map(Budget::Usd)
                    .ok_or("monthly_budget_usd is not an amount of dollars".to_owned())
            })
            .transpose()
            .map_err(context)?;
        let change =
            limits_change(&entry.tenant, entry.rate_per_minute, budget).map_err(context)?;
        let conflict = || {
            context(
                "two entries give the tenant different limits (limits are the tenant's, \
                 shared by its keys)"
                    .to_owned(),
            )
        };
        match given.iter_mut().find(|(t, _, _)| *t == change.tenant) {
            Some((_, rate, known_budget)) => {
                if let Some(asked) = entry.rate_per_minute {
                    if rate.is_some_and(|r| r != asked) {
                        return Err(conflict());
                    }
                    *rate = Some(asked);
                }
                if let Some(asked) = budget {
                    if known_budget.is_some_and(|b| b != asked) {
                        return Err(conflict());
                    }
                    *known_budget = Some(asked);
                }
            }
            None => given.push((change.tenant.clone(), entry.rate_per_minute, budget)),
        }
        keys.push(NewKey::new(Some(&entry.key), &change.tenant).map_err(context)?);
    }
    let limits = given
        .into_iter()
        .map(|(tenant, rate, budget)| LimitsUpdate {
            tenant,
            rate_per_minute: Some(rate.unwrap_or(DEFAULT_RATE_PER_MINUTE)),
            monthly_budget: Some(budget.and_then(Budget::micros)),
        })
        .collect();
    Ok(DevKeys { limits, keys })
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
        let parsed = parse_dev_keys(
            r#"[{"tenant": "acme", "key": "acme-local-key-0001"},
                {"tenant": "beta", "key": "beta-local-key-0002", "monthly_budget_usd": 2.5},
                {"tenant": "beta", "key": "beta-local-key-0003", "rate_per_minute": 5},
                {"tenant": "beta", "key": "beta-local-key-0004", "rate_per_minute": 5, "monthly_budget_usd": 2.5}]"#,
        )
        .unwrap();
        assert_eq!(parsed.keys.len(), 4);
        assert_eq!(parsed.limits.len(), 2);
        assert_eq!(parsed.limits[0].rate_per_minute, Some(60));
        assert_eq!(parsed.limits[0].monthly_budget, Some(None));
        assert_eq!(
            (
                parsed.limits[1].rate_per_minute,
                parsed.limits[1].monthly_budget
            ),
            (Some(5), Some(Some(2_500_000))),
            "entries of one tenant that each give part of its limits agree"
        );
        for bad in [
            r#"[{"tenant": "Acme!", "key": "acme-local-key-0001"}]"#,
            r#"[{"tenant": "acme", "key": "short"}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "rate_per_minute": 0}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "monthly_budget_usd": -1}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "rate": 5}]"#,
            r#"[{"tenant": "acme", "key": "acme-local-key-0001", "rate_per_minute": 5},
                {"tenant": "acme", "key": "acme-local-key-0002", "rate_per_minute": 6}]"#,
            r#"{"tenant": "acme"}"#,
        ] {
            assert!(parse_dev_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn budgets_are_dollars_or_none() {
        assert_eq!(Budget::parse("25"), Ok(Budget::Usd(25_000_000)));
        assert_eq!(Budget::parse("None"), Ok(Budget::Unlimited));
        assert!(Budget::parse("-1").is_err());
        assert!(Budget::parse("lots").is_err());
    }

    #[tokio::test]
    async fn limit_changes_keep_what_is_not_given() {
        use imagegen_shared::testing::fakes::MemoryRecords;
        let store = MemoryRecords::default();
        let apply = |rate, budget| {
            let change = limits_change("acme", rate, budget).unwrap();
            let store = &store;
            async move { apply_limits(store, &change).await.unwrap() }
        };
        let limits = apply(Some(30), Some(Budget::Usd(5_000_000))).await;
        assert_eq!(
            (limits.rate_per_minute, limits.monthly_budget),
            (30, Some(5_000_000))
        );
        let limits = apply(Some(90), None).await;
        assert_eq!(
            (limits.rate_per_minute, limits.monthly_budget),
            (90, Some(5_000_000))
        );
        let limits = apply(None, Some(Budget::Unlimited)).await;
        assert_eq!((limits.rate_per_minute, limits.monthly_budget), (90, None));
        let fresh = limits_change("beta", None, None).unwrap();
        let limits = apply_limits(&store, &fresh).await.unwrap();
        assert_eq!((limits.rate_per_minute, limits.monthly_budget), (60, None));
    }
}
