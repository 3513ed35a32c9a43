//! Opening an object store from a URL, and the layout of a ledger in it.
//!
//! ```text
//! <url prefix>/<mesh>/<node>/manifest/<generation>.json   the manifest, one object per version
//! <url prefix>/<mesh>/<node>/wal/<seq>.seg                 sealed WAL segments, as on disk
//! <url prefix>/<mesh>/<node>/snapshots/<seq>/...           snapshots, as on disk (MANIFEST + files)
//! ```
//!
//! WAL segments are shared by every shard of a relay (one fdatasync covers
//! them all), so the unit of a ledger is the relay (`<node>`, its pod name);
//! inside a snapshot, files are grouped per shard as on disk.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use url::Url;

/// Where the store is and how to reach it. Every flag is also an environment
/// variable; the usual provider variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`) are
/// read as well, so static keys, web identity or instance credentials work
/// as with the providers' own tools.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The store: `file:///abs/dir` (or a plain directory path), `s3://bucket[/prefix]`,
    /// `gs://bucket[/prefix]`, `az://container[/prefix]`.
    #[arg(long, env = "AETHER_LEDGER_STORE", default_value = "./aether-ledger")]
    pub store: String,
    /// S3-compatible endpoint (e.g. `http://127.0.0.1:9000` for a local server).
    #[arg(long, env = "AETHER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "AETHER_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address buckets as `bucket.host` instead of `host/bucket` (path style is the default,
    /// which most S3-compatible servers expect).
    #[arg(long, env = "AETHER_S3_VIRTUAL_HOSTED", default_value_t = false)]
    pub s3_virtual_hosted: bool,
    /// Allow plain `http://` endpoints (local servers only).
    #[arg(long, env = "AETHER_S3_ALLOW_HTTP", default_value_t = false)]
    pub allow_http: bool,
    /// Any other object_store option, `KEY=VALUE` (e.g. `timeout=10s`, `aws_unsigned_payload=true`).
    /// Repeat or comma-separate.
    #[arg(long = "store-option", env = "AETHER_STORE_OPTIONS", value_delimiter = ',')]
    pub store_option: Vec<String>,
    /// How long the store client retries one request before the error surfaces
    /// (the shipper then backs off and retries on its own).
    #[arg(long, env = "AETHER_STORE_RETRY_TIMEOUT", default_value = "10s", value_parser = aether_relay::config::parse_duration)]
    pub request_retry_timeout: std::time::Duration,
}

/// Which ledgers a store-wide tool (`compact`, `verify`) works on.
#[derive(Debug, Clone, Default, Args)]
pub struct Selection {
    /// Only this mesh.
    #[arg(long)]
    pub mesh: Option<String>,
    /// Only this relay (needs --mesh).
    #[arg(long, requires = "mesh")]
    pub node: Option<String>,
}

/// A ledger's objects: the store and the prefix `<mesh>/<node>`.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// `<url prefix>/<mesh>/<node>`.
    pub base: Path,
}

/// An opened store and the prefix its URL names.
#[derive(Debug, Clone)]
pub struct Store {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The URL's path (empty for a bucket root).
    pub root: Path,
}

impl StoreArgs {
    /// Opens the store named by `--store`.
    pub fn open(&self) -> anyhow::Result<Store> {
        // The HTTP client needs a TLS provider; keep ring, the one the rest of the project uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if !self.store.contains("://") {
            // A plain path: a local directory store (the development default).
            let dir = std::path::absolute(&self.store).with_context(|| format!("--store {:?}", self.store))?;
            return open_local(dir);
        }
        let url = Url::parse(&self.store).with_context(|| format!("--store {:?} is not a URL", self.store))?;
        if url.scheme() == "file" {
            let dir = url.to_file_path().map_err(|()| anyhow::anyhow!("--store {url}: not an absolute file path"))?;
            return open_local(dir);
        }
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let mut given: Vec<(String, String)> = Vec::new();
        if let Some(e) = &self.s3_endpoint {
            given.push(("aws_endpoint".into(), e.clone()));
        }
        if let Some(r) = &self.s3_region {
            given.push(("aws_region".into(), r.clone()));
        }
        given.push(("aws_virtual_hosted_style_request".into(), self.s3_virtual_hosted.to_string()));
        if self.allow_http {
            given.push(("allow_http".into(), "true".into()));
        }
        for o in &self.store_option {
            let (k, v) = o.split_once('=').with_context(|| format!("--store-option {o:?} is not KEY=VALUE"))?;
            given.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        // Our own loop retries with backoff; the client's retries only ride out blips, so
        // that an unreachable store shows in metrics and logs within seconds.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: self.request_retry_timeout,
            ..object_store::RetryConfig::default()
        };
        let root = Path::from_url_path(url.path()).with_context(|| format!("--store {url}: bad path"))?;
        // Options from the environment that do not apply to this provider are ignored;
        // an explicit option that does not apply is an error.
        macro_rules! build {
            ($builder:expr, $key:ty, $s3:expr) => {{
                let mut b = $builder.with_url(url.as_str()).with_retry(retry);
                for (k, v) in env {
                    if let Ok(key) = k.parse::<$key>() {
                        b = b.with_config(key, v);
                    }
                }
                for (k, v) in given {
                    if k.starts_with("aws_") && !$s3 {
                        continue;
                    }
                    let key = k.parse::<$key>().map_err(|e| anyhow::anyhow!("store option {k:?}: {e}"))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().with_context(|| format!("opening store {url}"))?) as Arc<dyn ObjectStore>
            }};
        }
        let store = match url.scheme() {
            "s3" | "s3a" => {
                build!(object_store::aws::AmazonS3Builder::new(), object_store::aws::AmazonS3ConfigKey, true)
            }
            "gs" => {
                build!(object_store::gcp::GoogleCloudStorageBuilder::new(), object_store::gcp::GoogleConfigKey, false)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                build!(object_store::azure::MicrosoftAzureBuilder::new(), object_store::azure::AzureConfigKey, false)
            }
            other => bail!("--store {url}: unsupported scheme {other:?} (use file://, s3://, gs:// or az://)"),
        };
        Ok(Store { store, root })
    }
}

fn open_local(dir: PathBuf) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .with_context(|| format!("opening {}", dir.display()))?
        .with_automatic_cleanup(true);
    Ok(Store { store: Arc::new(fs), root: Path::default() })
}

/// Checks a mesh or node name: one path segment of letters, digits, `-`, `_`, `.`.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("{what} {name:?} must be 1-253 letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

impl Store {
    /// The ledger of relay `node` in mesh `mesh`.
    pub fn ledger(&self, mesh: &str, node: &str) -> anyhow::Result<Ledger> {
        check_name("mesh", mesh)?;
        check_name("node", node)?;
        Ok(Ledger { store: self.store.clone(), base: join(&join(&self.root, mesh), node) })
    }

    /// The ledgers `sel` selects: one, a mesh's, or all of them.
    pub async fn select(&self, sel: &Selection) -> anyhow::Result<Vec<(String, String)>> {
        match (&sel.mesh, &sel.node) {
            (Some(m), Some(n)) => Ok(vec![(m.clone(), n.clone())]),
            (m, _) => self.ledgers(m.as_deref()).await,
        }
    }

    /// Every ledger in the store (or in one mesh): `(mesh, node)` pairs with a manifest.
    pub async fn ledgers(&self, mesh: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
        let meshes = match mesh {
            Some(m) => vec![m.to_owned()],
            None => self.children(&self.root).await?,
        };
        let mut out = Vec::new();
        for m in meshes {
            for n in self.children(&join(&self.root, &m)).await? {
                let ledger = self.ledger(&m, &n)?;
                if crate::manifest::latest_generation(&ledger).await?.is_some() {
                    out.push((m.clone(), n));
                }
            }
        }
        Ok(out)
    }

    async fn children(&self, prefix: &Path) -> anyhow::Result<Vec<String>> {
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let list = self.store.list_with_delimiter(prefix).await.context("listing the store")?;
        Ok(list.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect())
    }
}

/// `base/child`.
pub fn join(base: &Path, child: &str) -> Path {
    base.clone().join(child)
}

impl Ledger {
    /// Object of WAL segment `seq`.
    pub fn segment(&self, seq: u64) -> Path {
        self.base.clone().join("wal").join(aether_relay::wal::segment::segment_name(seq))
    }

    /// Object of file `name` (relative, may contain `/`) of the snapshot covering `covers`.
    pub fn snapshot_file(&self, covers: u64, name: &str) -> Path {
        let mut p = self.base.clone().join("snapshots").join(aether_relay::wal::snapshot::snapshot_dir_name(covers));
        for part in name.split('/') {
            p = p.join(part);
        }
        p
    }

    /// Object of a recorded segment.
    pub fn segment_object(&self, entry: &crate::manifest::SegmentEntry) -> Path {
        match &entry.object {
            None => self.segment(entry.seq),
            Some(key) => key.split('/').fold(self.base.clone(), |p, part| p.join(part)),
        }
    }

    /// A fresh key for an upload of segment `seq` (relative to the ledger).
    pub fn new_segment_key(seq: u64) -> String {
        format!("wal/{seq:020}-{:016x}.seg", rand::random::<u64>())
    }

    /// Object of file `name` of snapshot `entry` (in its own directory, if it has one).
    pub fn snapshot_object(&self, entry: &crate::manifest::SnapshotEntry, name: &str) -> Path {
        match &entry.dir {
            None => self.snapshot_file(entry.covers, name),
            Some(dir) => {
                let mut p = self.base.clone();
                for part in dir.split('/').chain(name.split('/')) {
                    p = p.join(part);
                }
                p
            }
        }
    }

    /// The manifest prefix.
    pub fn manifest_dir(&self) -> Path {
        self.base.clone().join("manifest")
    }

    /// Uploads `data` to `path`; objects above `multipart_threshold` go in
    /// parts, which the store makes visible only when the upload completes.
    pub async fn upload(&self, path: &Path, data: Bytes, multipart_threshold: usize) -> object_store::Result<()> {
        if data.len() <= multipart_threshold {
            self.store.put(path, PutPayload::from_bytes(data)).await?;
            return Ok(());
        }
        let upload = self.store.put_multipart(path).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, multipart_threshold.max(5 << 20));
        w.put(data);
        w.finish().await?;
        Ok(())
    }

    /// Downloads `path`.
    pub async fn download(&self, path: &Path) -> object_store::Result<Bytes> {
        self.store.get(path).await?.bytes().await
    }
}
