//! The prices `make cost` uses, in one place.

/// USD, us-east-1, on-demand list prices without free tiers; Lambda on arm64.
/// Source: the AWS pricing pages of API Gateway, Lambda, DynamoDB, S3, SQS, CloudWatch and
/// data transfer (2026), and Replicate's model pages (2026).
pub struct Prices {
    /// HTTP API, first 300 million requests a month (each request up to 512 KB).
    pub api_gateway_request: f64,
    pub lambda_request: f64,
    pub lambda_arm_gb_second: f64,
    /// On-demand write and read request units.
    pub dynamo_write_unit: f64,
    pub dynamo_read_unit: f64,
    pub dynamo_storage_gb_month: f64,
    /// Point-in-time recovery (the template turns it on), on the table's size.
    pub dynamo_pitr_gb_month: f64,
    /// S3 Standard: PUT, COPY, POST, LIST; and GET, HEAD and the rest.
    pub s3_tier1_request: f64,
    pub s3_tier2_request: f64,
    pub s3_storage_gb_month: f64,
    /// Data transfer out to the internet, first 10 TB a month (first 100 GB free).
    pub egress_gb: f64,
    /// Standard queue requests (64 KB chunks).
    pub sqs_request: f64,
    pub logs_ingest_gb: f64,
    /// A standard-resolution metric alarm.
    pub alarm_month: f64,
    /// Replicate: black-forest-labs/flux-schnell, per output image.
    pub replicate_flux_schnell_image: f64,
}

pub const PRICES: Prices = Prices {
    api_gateway_request: 1.00 / 1e6,
    lambda_request: 0.20 / 1e6,
    lambda_arm_gb_second: 0.000_013_333_4,
    dynamo_write_unit: 0.625 / 1e6,
    dynamo_read_unit: 0.125 / 1e6,
    dynamo_storage_gb_month: 0.25,
    dynamo_pitr_gb_month: 0.20,
    s3_tier1_request: 0.005 / 1000.0,
    s3_tier2_request: 0.0004 / 1000.0,
    s3_storage_gb_month: 0.023,
    egress_gb: 0.09,
    sqs_request: 0.40 / 1e6,
    logs_ingest_gb: 0.50,
    alarm_month: 0.10,
    replicate_flux_schnell_image: 0.003,
};

/// AWS bills storage and transfer in binary gigabytes.
pub const GB: f64 = (1u64 << 30) as f64;
/// AWS prices a month as 730 hours.
pub const MONTH_SECONDS: f64 = 730.0 * 3600.0;

/// GB-months of keeping `bytes` for `seconds`.
pub fn gb_months(bytes: f64, seconds: f64) -> f64 {
    bytes / GB * seconds / MONTH_SECONDS
}

/// GB-seconds of a Lambda function with `memory_mb` running `ms` milliseconds.
pub fn gb_seconds(memory_mb: u32, ms: u64) -> f64 {
    f64::from(memory_mb) / 1024.0 * ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(gb_seconds(1024, 1000), 1.0);
        assert_eq!(gb_seconds(256, 20), 0.005);
        assert!((gb_months(GB, MONTH_SECONDS) - 1.0).abs() < 1e-12);
        // A million 256 MB, 20 ms invocations: $0.20 of requests + $0.067 of duration.
        let duration = gb_seconds(256, 20) * 1e6 * PRICES.lambda_arm_gb_second;
        assert!((duration - 0.0667).abs() < 0.001, "{duration}");
    }
}
