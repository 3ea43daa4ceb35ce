//! The object store: reads within a limit, overwrites, multipart uploads in part order,
//! failed completes and aborts.

use super::*;

/// The rules of `ObjectStore` that S3 enforces and the output copy relies on. `read_back`
/// reads a stored object (bytes, content type), `None` if there is none: the port itself
/// has no read.
pub async fn object_store_suite<O, F, Fut>(objects: &O, read_back: F)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let prefix = format!("conformance/{}", unique());
    put_object_overwrites(objects, &read_back, &prefix).await;
    multipart_concatenates_in_part_order(objects, &read_back, &prefix).await;
    failed_completes_leave_the_upload_open(objects, &read_back, &prefix).await;
    aborted_uploads_are_gone(objects, &read_back, &prefix).await;

    objects_read_back_within_a_limit(objects, &prefix).await;
    let key = format!("{prefix}/presigned/0.webp");
    let put = objects
        .presign_put(&key, "image/webp", 1234, Duration::from_secs(900))
        .await
        .expect("presign_put");
    assert!(
        put.url.contains(&key),
        "presign_put: `{}` does not name `{key}`",
        put.url
    );
    let header = |name: &str| {
        put.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        (header("content-type"), header("content-length")),
        (Some("image/webp"), Some("1234")),
        "presign_put: the PUT must carry the declared type and size: {:?}",
        put.headers
    );
    let url = objects
        .presign_get(&key, Duration::from_secs(3600))
        .await
        .expect("presign_get");
    let parsed =
        url::Url::parse(&url).unwrap_or_else(|e| panic!("presign_get: `{url}` is not a URL: {e}"));
    assert!(
        parsed.path().ends_with(&format!("/{key}")),
        "presign_get: `{url}` does not name `{key}`"
    );
}

pub(super) async fn objects_read_back_within_a_limit<O: ObjectStore>(objects: &O, prefix: &str) {
    let key = format!("{prefix}/read/upload");
    assert_eq!(
        objects.read_object(&key, 100).await.expect("read_object"),
        ObjectRead::Missing,
        "read_object: no object is Missing"
    );
    objects
        .put_object(&key, "image/png", body(9, 100))
        .await
        .expect("put_object");
    assert_eq!(
        objects.read_object(&key, 100).await.expect("read_object"),
        ObjectRead::Found {
            content_type: "image/png".to_owned(),
            bytes: body(9, 100),
        },
        "read_object: an object within the limit comes back whole"
    );
    assert_eq!(
        objects.read_object(&key, 99).await.expect("read_object"),
        ObjectRead::TooLarge { size: 100 },
        "read_object: an object over the limit is only measured"
    );
}

pub(super) fn body(byte: u8, len: usize) -> Bytes {
    Bytes::from(vec![byte; len])
}

pub(super) async fn put_object_overwrites<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/put/0.png");
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "no object before it is put"
    );
    objects
        .put_object(&key, "image/png", Bytes::from_static(b"\x89PNG first"))
        .await
        .expect("put_object");
    assert_eq!(
        read_back(key.clone()).await,
        Some((b"\x89PNG first".to_vec(), "image/png".to_owned())),
        "put_object: bytes and content type are stored"
    );
    objects
        .put_object(&key, "image/webp", Bytes::from_static(b"RIFF second"))
        .await
        .expect("put_object");
    assert_eq!(
        read_back(key).await,
        Some((b"RIFF second".to_vec(), "image/webp".to_owned())),
        "put_object: a second put replaces the object"
    );
}

pub(super) async fn upload<O: ObjectStore>(
    objects: &O,
    key: &str,
    id: &str,
    number: i32,
    body: Bytes,
) -> String {
    objects
        .upload_part(key, id, number, body)
        .await
        .unwrap_or_else(|e| panic!("upload_part {number} of {key}: {e}"))
}

pub(super) async fn multipart_concatenates_in_part_order<O, F, Fut>(
    objects: &O,
    read_back: &F,
    prefix: &str,
) where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/multipart/0.webp");
    let id = objects
        .create_multipart(&key, "image/webp")
        .await
        .expect("create_multipart");
    // Parts may arrive in any order, and a part uploaded again replaces the first upload.
    let last = upload(objects, &key, &id, 3, body(b'c', 1000)).await;
    let stale = upload(objects, &key, &id, 1, body(b'x', MIN_PART_SIZE)).await;
    let second = upload(objects, &key, &id, 2, body(b'b', MIN_PART_SIZE + 1)).await;
    let first = upload(objects, &key, &id, 1, body(b'a', MIN_PART_SIZE)).await;
    assert_ne!(
        stale, first,
        "upload_part: the ETag names the part's content"
    );
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "no object before the upload completes"
    );
    objects
        .complete_multipart(&key, &id, &[(1, first), (2, second), (3, last)])
        .await
        .expect("complete_multipart: parts uploaded out of order, listed in order");
    let mut expected = vec![b'a'; MIN_PART_SIZE];
    expected.extend(vec![b'b'; MIN_PART_SIZE + 1]);
    expected.extend(vec![b'c'; 1000]);
    let (stored, content_type) = read_back(key.clone())
        .await
        .expect("complete_multipart: the object exists");
    assert_eq!(
        content_type, "image/webp",
        "complete_multipart: the upload's content type"
    );
    assert!(
        stored == expected,
        "complete_multipart: the object is the parts in part-number order, the last upload of \
         each part ({} bytes stored, {} expected)",
        stored.len(),
        expected.len()
    );
    // (Completing it again is not checked: S3 answers a repeated complete of the upload that
    // made the object with success, so that a retried complete is not a failure.)
    assert!(
        objects
            .upload_part(&key, &id, 4, body(b'd', 10))
            .await
            .is_err(),
        "upload_part: a completed upload takes no more parts"
    );

    // A single small part is a whole object.
    let key = format!("{prefix}/multipart/1.webp");
    let id = objects
        .create_multipart(&key, "image/webp")
        .await
        .expect("create_multipart");
    let only = upload(objects, &key, &id, 1, body(b'z', 10)).await;
    objects
        .complete_multipart(&key, &id, &[(1, only)])
        .await
        .expect("complete_multipart: one small part");
    assert_eq!(
        read_back(key).await,
        Some((vec![b'z'; 10], "image/webp".to_owned()))
    );
}

pub(super) async fn failed_completes_leave_the_upload_open<O, F, Fut>(
    objects: &O,
    read_back: &F,
    prefix: &str,
) where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/refused/0.png");
    let id = objects
        .create_multipart(&key, "image/png")
        .await
        .expect("create_multipart");
    let small = upload(objects, &key, &id, 1, body(b's', 100)).await;
    let tail = upload(objects, &key, &id, 2, body(b't', 100)).await;
    let refused: [(&str, Vec<(i32, String)>); 4] = [
        ("no parts", vec![]),
        (
            "a part other than the last under 5 MiB",
            vec![(1, small), (2, tail.clone())],
        ),
        (
            "an ETag that is not the part's",
            vec![(2, "\"0123456789abcdef0123456789abcdef\"".to_owned())],
        ),
        ("a part never uploaded", vec![(3, tail.clone())]),
    ];
    for (why, parts) in &refused {
        assert!(
            objects.complete_multipart(&key, &id, parts).await.is_err(),
            "complete_multipart: refused for {why}"
        );
    }
    let first = upload(objects, &key, &id, 1, body(b'p', MIN_PART_SIZE)).await;
    assert!(
        objects
            .complete_multipart(&key, &id, &[(2, tail.clone()), (1, first.clone())])
            .await
            .is_err(),
        "complete_multipart: refused for parts listed out of order"
    );
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "a refused complete stores nothing"
    );
    objects
        .complete_multipart(&key, &id, &[(1, first), (2, tail)])
        .await
        .expect("complete_multipart: the upload stays open after refused completes");
    let mut expected = vec![b'p'; MIN_PART_SIZE];
    expected.extend(vec![b't'; 100]);
    let (stored, content_type) = read_back(key).await.expect("the object exists");
    assert!(
        stored == expected && content_type == "image/png",
        "complete_multipart: stored"
    );
}

pub(super) async fn aborted_uploads_are_gone<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/aborted/0.png");
    let id = objects
        .create_multipart(&key, "image/png")
        .await
        .expect("create_multipart");
    let part = upload(objects, &key, &id, 1, body(b'q', 100)).await;
    objects
        .abort_multipart(&key, &id)
        .await
        .expect("abort_multipart");
    assert!(
        objects
            .complete_multipart(&key, &id, &[(1, part)])
            .await
            .is_err(),
        "complete_multipart: an aborted upload cannot complete"
    );
    assert!(
        objects
            .upload_part(&key, &id, 2, body(b'r', 10))
            .await
            .is_err(),
        "upload_part: an aborted upload takes no parts"
    );
    assert!(
        objects.abort_multipart(&key, &id).await.is_err(),
        "abort_multipart: an upload already aborted is unknown (S3: NoSuchUpload)"
    );
    assert_eq!(
        read_back(key).await,
        None,
        "an aborted upload stores nothing"
    );
}
