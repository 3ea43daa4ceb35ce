//! Usage (`GET /v1/usage`): the caller's tenant's usage in the current calendar month (UTC).

use serde::Serialize;

use super::{ApiError, App};
use crate::domain::cost::month_of;
use crate::domain::money::usd;
use crate::domain::tenancy::Caller;
use crate::ports::Ports;
use crate::ports::accounts::AccountStore;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageView {
    pub tenant: String,
    pub month: String,
    pub predictions: u64,
    pub images: u64,
    /// Actual cost of the predictions that ended plus the estimate of those still running:
    /// what the budget is checked against.
    pub cost_usd: f64,
    pub budget_usd: Option<f64>,
}

impl<P: Ports> App<P> {
    /// The caller's tenant's usage this month, against its budget.
    pub async fn usage(&self, caller: &Caller) -> Result<UsageView, ApiError> {
        let month = month_of(self.clock.now());
        let usage = self.records.usage(&caller.tenant, &month).await?;
        Ok(UsageView {
            tenant: caller.tenant.to_string(),
            month,
            predictions: usage.predictions,
            images: usage.images,
            cost_usd: usd(usage.committed),
            budget_usd: caller.monthly_budget.map(usd),
        })
    }
}
