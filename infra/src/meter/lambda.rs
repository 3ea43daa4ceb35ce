//! Lambda as the local stack would be billed: each API request one API Gateway request
//! and one invocation of the function its route maps to in the template, each copy job one
//! invocation of the queue-fed function, each billed for its handler's wall time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::tally::minus;
use crate::sam::{self, Template};

/// Invocations of one Lambda function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionCalls {
    pub invocations: u64,
    /// Handler wall time, each call rounded up to the next millisecond as Lambda bills it.
    pub billed_ms: u64,
}

super::tally::fieldwise_sub!(FunctionCalls {
    invocations,
    billed_ms
});

#[derive(Debug, Clone, Default, PartialEq)]
pub struct InvocationTally {
    /// API Gateway requests per route (`POST /v1/predictions`); `unrouted` for the rest.
    pub api_requests: BTreeMap<String, u64>,
    /// Per function (the template's logical id).
    pub functions: BTreeMap<String, FunctionCalls>,
}

impl InvocationTally {
    pub fn since(&self, before: &Self) -> Self {
        Self {
            api_requests: minus(&self.api_requests, &before.api_requests),
            functions: minus(&self.functions, &before.functions),
        }
    }
}

/// Counts what the local stack's handlers would be as Lambda invocations: each API request
/// is one API Gateway request and one invocation of the function its route maps to in the
/// template; each copy job one invocation of the queue-fed function (BatchSize 1).
pub struct Invocations {
    template: Template,
    tally: Mutex<InvocationTally>,
}

impl Invocations {
    pub fn new(template: Template) -> Self {
        Self {
            template,
            tally: Mutex::new(InvocationTally::default()),
        }
    }

    pub fn record_request(&self, method: &str, path: &str, took: Duration) {
        let function = self.template.route(method, path);
        let route = function
            .and_then(|f| {
                f.routes
                    .iter()
                    .find(|(m, p)| m.eq_ignore_ascii_case(method) && sam::route_matches(p, path))
            })
            .map_or_else(|| "unrouted".to_owned(), |(m, p)| format!("{m} {p}"));
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        *tally.api_requests.entry(route).or_default() += 1;
        if let Some(function) = function {
            add_call(&mut tally, &function.name, took);
        }
    }

    /// A job of the queue `queue` (its logical id) ran for `took`.
    pub fn record_queue_job(&self, queue: &str, took: Duration) {
        let name = self
            .template
            .queue_consumer(queue)
            .map_or("queue consumer", |f| f.name.as_str())
            .to_owned();
        add_call(
            &mut self.tally.lock().unwrap_or_else(|p| p.into_inner()),
            &name,
            took,
        );
    }

    /// One run of a scheduled function, timed by the caller.
    pub fn record_scheduled(&self, function: &str, took: Duration) {
        add_call(
            &mut self.tally.lock().unwrap_or_else(|p| p.into_inner()),
            function,
            took,
        );
    }

    pub fn tally(&self) -> InvocationTally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn add_call(tally: &mut InvocationTally, function: &str, took: Duration) {
    let calls = tally.functions.entry(function.to_owned()).or_default();
    calls.invocations += 1;
    calls.billed_ms += billed_ms(took);
}

/// Lambda bills duration in 1 ms steps, rounded up.
pub fn billed_ms(took: Duration) -> u64 {
    (took.as_micros() as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_the_millisecond() {
        assert_eq!(billed_ms(Duration::from_micros(1)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1000)), 1);
        assert_eq!(billed_ms(Duration::from_micros(1001)), 2);
        assert_eq!(billed_ms(Duration::ZERO), 1);
    }

    #[test]
    fn invocations_follow_the_template_routes() {
        let template = Template::parse(include_str!("../../../template.yaml")).unwrap();
        let meter = Invocations::new(template);
        meter.record_request("POST", "/v1/predictions", Duration::from_micros(2500));
        meter.record_request("GET", "/v1/predictions/abc", Duration::from_millis(4));
        meter.record_request("GET", "/nowhere", Duration::from_millis(4));
        meter.record_queue_job("CopyQueue", Duration::from_millis(10));
        let tally = meter.tally();
        assert_eq!(tally.api_requests["POST /v1/predictions"], 1);
        assert_eq!(tally.api_requests["GET /v1/predictions/{id}"], 1);
        assert_eq!(tally.api_requests["unrouted"], 1);
        assert_eq!(
            tally.functions["SubmitFunction"],
            FunctionCalls {
                invocations: 1,
                billed_ms: 3
            }
        );
        assert_eq!(tally.functions["CopierFunction"].invocations, 1);
        let later = meter.tally();
        assert!(later.since(&tally).functions.is_empty());
    }
}
