//! Where archived media is kept: a local directory or an S3 bucket, named by one URL
//! (`media.storage`). A leaf: `config` validates the URL with it, the archive writes to it.

use object_store::{ObjectStore, path::Path as ObjectPath};
use std::sync::Arc;
use url::Url;

/// The storage named by `media.storage` (`file:///dir` or `s3://bucket/prefix`) and the
/// prefix inside it. S3 settings come from the usual `AWS_*` variables.
pub fn open(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let aws = std::env::vars().filter_map(|(k, v)| {
        let k = k.to_ascii_lowercase();
        k.starts_with("aws_").then_some((k, v))
    });
    open_with_options(url, aws)
}

/// [`open`] with S3 options given explicitly (`aws_endpoint`, `aws_region`, ...).
pub fn open_with_options(
    url: &str,
    aws: impl IntoIterator<Item = (String, String)>,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL: {url:?}: {e}"))?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|_| format!("not a local directory: {url:?}"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("cannot use {}: {e}", dir.display()))?;
            Ok((Arc::new(store), ObjectPath::default()))
        }
        "s3" => {
            let (store, prefix) = object_store::parse_url_opts(&parsed, aws)
                .map_err(|e| format!("cannot use {url:?}: {e}"))?;
            Ok((Arc::from(store), prefix))
        }
        other => Err(format!(
            "unsupported storage scheme {other:?} (use file:// or s3://)"
        )),
    }
}
