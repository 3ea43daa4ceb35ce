//! The IAM actions each port method needs from the AWS adapters: the SAM template grants
//! each function exactly the actions (and item key prefixes) of the methods its handlers
//! call, and the template test holds the two together.

/// The IAM actions each port method needs from the AWS adapters (`dynamo.rs`, `s3.rs`).
/// The SAM template grants each function the actions of the methods its handler calls.
pub fn iam_actions(port_method: &str) -> &'static [&'static str] {
    match port_method {
        "try_claim" | "replace_claim" | "insert_prediction" | "put_upload" => &["dynamodb:PutItem"],
        // Read the tenant's limits; put the key carrying them and list it with the tenant
        // in one transaction.
        "create_key" => &[
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
        ],
        "settle_claim" | "advance" | "claim_sync" | "revoke_key" | "update_tenant"
        | "count_request" | "reserve_cost" | "settle_cost" | "callback_queued"
        | "callback_attempted" | "claim_create" | "release_create" | "mark_queued" => {
            &["dynamodb:UpdateItem"]
        }
        // Read the pace, then put the next slot conditionally.
        "reserve_create_slot" => &["dynamodb:GetItem", "dynamodb:PutItem"],
        // Read first; put (conditionally) only when the tenant has none yet.
        "callback_secret" => &["dynamodb:GetItem", "dynamodb:PutItem"],
        // The `replicate#` binding is put, the record updated (the binding given back if not).
        "attach_replicate_id" => &[
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ],
        "release_claim" => &["dynamodb:DeleteItem"],
        "get_prediction" | "get_key" | "get_tenant" | "usage" | "get_upload" => {
            &["dynamodb:GetItem"]
        }
        // On the `open-index` and `tenant-index` indexes only.
        "list_open" | "list_tenant" => &["dynamodb:Query"],
        // Creating, uploading parts of and completing a multipart upload are all s3:PutObject.
        "put_object" | "create_multipart" | "upload_part" | "complete_multipart" => {
            &["s3:PutObject"]
        }
        "abort_multipart" => &["s3:AbortMultipartUpload"],
        // A presigned URL carries the signer's permission.
        "presign_get" => &["s3:GetObject"],
        // ListBucket (on the bucket, for its prefix) makes a missing key a 404, not a 403.
        "read_object" => &["s3:GetObject", "s3:ListBucket"],
        "presign_put" => &["s3:PutObject"],
        "send_copy" | "send_callback" | "dead_letter_callback" | "send_create" => {
            &["sqs:SendMessage"]
        }
        _ => &[],
    }
}

/// The table items a record-store method acts on, by key prefix (`dynamodb:LeadingKeys`),
/// with each IAM action: what a function's statements on the table must allow, and no
/// more. A claim method acts on its claim's prefix (`cache#` or `idem#`), `claim_prefix`.
pub fn item_actions(port_method: &str, claim_prefix: Option<&str>) -> Vec<(&'static str, String)> {
    let on = |prefix: &str| prefix.to_owned();
    let claim = || on(claim_prefix.unwrap_or("cache#"));
    let (put, get, update, delete) = (
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    );
    match port_method {
        "try_claim" | "replace_claim" => vec![(put, claim())],
        "settle_claim" => vec![(update, claim())],
        "release_claim" => vec![(delete, claim())],
        "insert_prediction" => vec![(put, on("pred#"))],
        "get_prediction" => vec![(get, on("pred#"))],
        "advance" | "claim_sync" | "callback_queued" | "callback_attempted" | "claim_create"
        | "release_create" | "mark_queued" => vec![(update, on("pred#"))],
        "reserve_create_slot" => vec![(get, on("pace#")), (put, on("pace#"))],
        "attach_replicate_id" => vec![
            (put, on("replicate#")),
            (update, on("pred#")),
            (delete, on("replicate#")),
        ],
        // The tenant read, then one transaction: the key put, the tenant updated (a
        // transaction needs each item's own action; it has none of its own).
        "create_key" => vec![
            (get, on("tenant#")),
            (put, on("apikey#")),
            (update, on("tenant#")),
        ],
        "get_key" => vec![(get, on("apikey#"))],
        "revoke_key" => vec![(update, on("apikey#"))],
        // The tenant's item, then each of its keys (they carry its limits).
        "update_tenant" => vec![(update, on("tenant#")), (update, on("apikey#"))],
        "get_tenant" => vec![(get, on("tenant#"))],
        "count_request" => vec![(update, on("rate#"))],
        "reserve_cost" | "settle_cost" => vec![(update, on("usage#"))],
        "usage" => vec![(get, on("usage#"))],
        "put_upload" => vec![(put, on("upload#"))],
        "get_upload" => vec![(get, on("upload#"))],
        "callback_secret" => vec![(get, on("whsec#")), (put, on("whsec#"))],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::iam_actions;

    /// Every SDK operation the adapters call has its IAM action in `iam_actions`, and every
    /// action there is called: the table cannot drift from the code.
    #[test]
    fn iam_table_matches_the_sdk_calls_in_the_adapters() {
        const OPERATIONS: &[(&str, &str)] = &[
            (".put_item()", "dynamodb:PutItem"),
            (".update_item()", "dynamodb:UpdateItem"),
            (".delete_item()", "dynamodb:DeleteItem"),
            (".get_item()", "dynamodb:GetItem"),
            (".query()", "dynamodb:Query"),
            (".scan()", "dynamodb:Scan"),
            (".put_object()", "s3:PutObject"),
            (".create_multipart_upload()", "s3:PutObject"),
            (".upload_part()", "s3:PutObject"),
            (".complete_multipart_upload()", "s3:PutObject"),
            (".abort_multipart_upload()", "s3:AbortMultipartUpload"),
            (".get_object()", "s3:GetObject"),
            (".delete_object()", "s3:DeleteObject"),
            (".send_message()", "sqs:SendMessage"),
        ];
        let source = [
            include_str!("dynamo/mod.rs"),
            include_str!("dynamo/records.rs"),
            include_str!("dynamo/accounts.rs"),
            include_str!("dynamo/pacer.rs"),
            include_str!("s3.rs"),
            include_str!("sqs.rs"),
        ]
        .concat();
        let called: std::collections::BTreeSet<&str> = OPERATIONS
            .iter()
            .filter(|(op, _)| source.contains(op))
            .map(|(_, action)| *action)
            .collect();
        let methods = [
            "try_claim",
            "replace_claim",
            "insert_prediction",
            "settle_claim",
            "attach_replicate_id",
            "advance",
            "claim_sync",
            "release_claim",
            "get_prediction",
            "put_object",
            "create_multipart",
            "upload_part",
            "complete_multipart",
            "abort_multipart",
            "presign_get",
            "list_open",
            "send_copy",
        ];
        let mapped: std::collections::BTreeSet<&str> = methods
            .iter()
            .flat_map(|m| iam_actions(m).iter().copied())
            .collect();
        assert_eq!(called, mapped);
        for method in methods {
            assert!(
                !iam_actions(method).is_empty(),
                "{method} has no IAM action"
            );
        }
    }
}
