//! Crash-safe dumps of the index for fast restart.
//!
//! * a dump is written into `<dir>/.tmp-*`, fsynced, renamed to `<dir>/gen-*`;
//!   then `<dir>/MANIFEST` is replaced atomically (write temp, fsync, rename,
//!   fsync dir). The manifest rename is the commit point: a crash before it
//!   leaves the previous dump in force. Older `gen-*`/`.tmp-*` are then deleted.
//! * the manifest (TOML) records format version, platform, dim, graph
//!   params (the metric among them), the caller's store version, the key of every point id, the
//!   tombstoned ids, and the length and SHA-256 of the graph file (nodes,
//!   links and vectors; see `hnsw::Graph::write_snapshot`). Its first line
//!   holds the SHA-256 of the rest.
//! * a dump is a **checkpoint**: an exact snapshot of the index at one moment,
//!   taken without stalling writes for its duration. Only the link lists and
//!   tombstones are copied under the index's writer lock; the graph file
//!   (every vector, 5 GB at 1M products) is written and hashed while writes
//!   go on. It holds at least the data of the store version it records,
//!   maybe more; the catalogue reconciles it with the store at start-up.
//! * `load` checks all of that and hashes the graph file while parsing it,
//!   using the graph only if the hash matches; the parser checks every count
//!   and id as well, so even a file that matches a tampered manifest is an
//!   error, never a panic or a bad graph.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::distance::Metric;
use super::generation::{Generation, shape_of};
use super::hnsw::Graph;
use super::slots::{Slot, SlotTable};
use super::{IndexError, IndexParams, VectorIndex};

const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
const HEADER_PREFIX: &str = "# lookbook vector index manifest, sha256 of the rest: ";
/// Bump on any change to the manifest or the graph file layout. (1: hnsw_rs
/// files; 2: our own graph file.)
const FORMAT_VERSION: u32 = 2;
const GEN_PREFIX: &str = "gen-";
const TMP_PREFIX: &str = ".tmp-";
const GRAPH_FILE: &str = "graph.bin";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    platform: String,
    dim: usize,
    /// Decimal string: TOML integers are i64 and the caller's version is u64.
    store_version: String,
    point_count: usize,
    live_count: usize,
    created_unix_ms: u64,
    /// Folder (inside the dump dir) holding the graph file.
    data_dir: String,
    /// Tombstoned point ids, ascending.
    dead: Vec<usize>,
    /// Key of each point id (dead ones included), indexed by id.
    keys: Vec<String>,
    graph: GraphParams,
    files: Vec<FileEntry>,
}

/// The parameters that shape the graph; a dump made with others is stale.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphParams {
    max_nb_connection: usize,
    ef_construction: usize,
    max_layer: usize,
    /// The metric the links were chosen with (and the vectors checked
    /// for). Written only when it is not cosine, and absent means cosine:
    /// dumps from before metrics existed load as the cosine dumps they
    /// are, and a cosine dump written now is one those builds can still
    /// load (so the format version stays 2). A build that predates metrics
    /// finds an unknown field in any other dump and rebuilds from the
    /// store, as it should: it could not use those vectors anyway.
    #[serde(default, skip_serializing_if = "is_cosine")]
    metric: Metric,
}

fn is_cosine(metric: &Metric) -> bool {
    *metric == Metric::Cosine
}

impl From<&IndexParams> for GraphParams {
    fn from(p: &IndexParams) -> Self {
        Self {
            max_nb_connection: p.max_nb_connection,
            ef_construction: p.ef_construction,
            max_layer: p.max_layer,
            metric: p.metric,
        }
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    len: u64,
    sha256: String,
}

fn platform() -> String {
    let endian = if cfg!(target_endian = "little") {
        "le"
    } else {
        "be"
    };
    format!("{}-{endian}-{}bit", std::env::consts::ARCH, usize::BITS)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IndexError {
    let path = path.to_path_buf();
    move |source| IndexError::Io { op, path, source }
}

fn corrupt(dir: &Path, reason: impl Into<String>) -> IndexError {
    IndexError::CorruptDump {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Hashes what passes through on its way to the file, so a dump is hashed
/// as it is written instead of read back afterwards (at 1M x 1280-d that
/// would be a second pass over 5 GB).
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    len: u64,
}

impl HashingWriter {
    fn new(inner: BufWriter<File>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Length and SHA-256 of everything written, and the file.
    fn finish(self) -> std::io::Result<(u64, String, File)> {
        let file = self.inner.into_inner().map_err(|e| e.into_error())?;
        Ok((self.len, hex(&self.hasher.finalize()), file))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
struct HashingReader {
    inner: BufReader<File>,
    hasher: Sha256,
}

impl HashingReader {
    fn new(inner: BufReader<File>) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// SHA-256 of the whole file: what was read, then the rest (a parser
    /// that stopped early must not make a damaged tail look intact).
    fn finish(mut self) -> String {
        let mut rest = [0_u8; 1 << 16];
        loop {
            match self.read(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        hex(&self.hasher.finalize())
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Makes renames/creations inside `dir` durable (POSIX needs the directory
/// itself fsynced for that).
fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{nanos}-{}-{n}", std::process::id())
}

/// A name we wrote ourselves: no separators, no `..`, so joining it to the
/// dump dir cannot escape it even if the manifest was tampered with.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

fn render_manifest(manifest: &Manifest) -> Result<String, IndexError> {
    let body = toml::to_string(manifest).map_err(|e| IndexError::Internal {
        reason: format!("serialising the manifest: {e}"),
    })?;
    Ok(format!(
        "{HEADER_PREFIX}{}\n{body}",
        sha256_hex(body.as_bytes())
    ))
}

/// The one field every format version has.
#[derive(Deserialize)]
struct FormatOnly {
    format_version: u32,
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("manifest is not UTF-8: {e}"))?;
    let (header, body) = text.split_once('\n').ok_or("manifest has no header line")?;
    let expected = header
        .strip_prefix(HEADER_PREFIX)
        .ok_or("manifest header is not ours")?;
    if sha256_hex(body.as_bytes()) != expected {
        return Err("manifest checksum mismatch".into());
    }
    toml::from_str(body).map_err(|e| match toml::from_str::<FormatOnly>(body) {
        Ok(f) if f.format_version != FORMAT_VERSION => {
            format!("{OTHER_FORMAT}{}", f.format_version)
        }
        _ => format!("manifest does not parse: {e}"),
    })
}

/// Prefix of `parse_manifest`'s error for a manifest of another format
/// version (intact, just not ours to read): such a dump is stale, not corrupt.
const OTHER_FORMAT: &str = "manifest of format version ";

impl VectorIndex {
    pub(super) fn dump_to(&self, dir: &Path, store_version: u64) -> Result<(), IndexError> {
        let _one_dump_at_a_time = self.dump_running.lock();
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(io_err("create dump dir", dir))?;
        let tmp = dir.join(unique_name(TMP_PREFIX));
        fs::create_dir(&tmp).map_err(io_err("create temp dir", &tmp))?;
        let data_dir = unique_name(GEN_PREFIX);
        let result = self.write_dump(dir, &tmp, &data_dir, store_version);
        match &result {
            Ok(points) => {
                info!(dir = %dir.display(), points, store_version, elapsed = ?started.elapsed(), "index dumped");
                collect_garbage(dir, &data_dir);
            }
            Err(_) => {
                // Best effort: whichever of the two exists is unreferenced.
                let _ = fs::remove_dir_all(&tmp);
                let _ = fs::remove_dir_all(dir.join(&data_dir));
            }
        }
        result.map(|_| ())
    }

    /// Returns the number of points dumped.
    ///
    /// Under the writer lock it copies only what writes change: the key
    /// table's tombstones and the graph's link lists (about 130 bytes per
    /// point; ~0.1 s at 1M points). The graph file, which holds every vector
    /// (5 KB per point), is then written and hashed while writes go on:
    /// vectors never change once published, so file and key table describe
    /// the index exactly as it was at the snapshot. Writes made after it are
    /// not in the dump; the caller's `store_version` must be read before the
    /// snapshot so that the dump holds at least that version's data.
    fn write_dump(
        &self,
        dir: &Path,
        tmp: &Path,
        data_dir: &str,
        store_version: u64,
    ) -> Result<usize, IndexError> {
        let (generation, links, keys, dead, live_count) = {
            let _writer = self.writer.lock();
            let generation = self.current.load_full();
            let links = generation.graph.snapshot_links();
            let n = generation.slots.len();
            if links.len() != n {
                return Err(IndexError::Internal {
                    reason: format!("graph has {} points, slot table {n}", links.len()),
                });
            }
            let mut keys = Vec::with_capacity(n);
            let mut dead = Vec::new();
            for id in 0..n {
                let slot = generation
                    .slots
                    .get(id)
                    .ok_or_else(|| IndexError::Internal {
                        reason: format!("slot {id} of {n} missing"),
                    })?;
                keys.push(Arc::clone(&slot.key));
                if !slot.is_live() {
                    dead.push(id);
                }
            }
            let live_count = generation.live();
            (generation, links, keys, dead, live_count)
        };
        let mut files = Vec::new();
        if links.len() > 0 {
            let path = tmp.join(GRAPH_FILE);
            let file = File::create(&path).map_err(io_err("create graph file", &path))?;
            let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
            generation
                .graph
                .write_snapshot(self.dim, &links, &mut out)
                .and_then(|()| out.flush())
                .map_err(io_err("write graph file", &path))?;
            let (len, sha256, file) = out.finish().map_err(io_err("write graph file", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            files.push(FileEntry {
                name: GRAPH_FILE.to_string(),
                len,
                sha256,
            });
        }
        // The old generation may be replaced by a rebuild meanwhile; this
        // dump describes the one it snapshotted, which stays valid.
        drop(generation);
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let point_count = keys.len();

        sync_dir(tmp)?;
        let final_dir = dir.join(data_dir);
        fs::rename(tmp, &final_dir).map_err(io_err("rename temp dir", &final_dir))?;
        sync_dir(dir)?;

        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            platform: platform(),
            dim: self.dim,
            store_version: store_version.to_string(),
            point_count,
            live_count,
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            data_dir: data_dir.to_string(),
            dead,
            keys,
            graph: GraphParams::from(&self.params),
            files,
        };
        let text = render_manifest(&manifest)?;
        let tmp_manifest = dir.join(MANIFEST_TMP);
        let mut file =
            File::create(&tmp_manifest).map_err(io_err("create manifest", &tmp_manifest))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err("write manifest", &tmp_manifest))?;
        drop(file);
        let manifest_path = dir.join(MANIFEST);
        fs::rename(&tmp_manifest, &manifest_path)
            .map_err(io_err("rename manifest", &manifest_path))?;
        sync_dir(dir)?;
        Ok(point_count)
    }
}

/// Deletes dump folders other than `keep` (older dumps, crashed temp dirs).
fn collect_garbage(dir: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name != keep
            && (name.starts_with(GEN_PREFIX) || name.starts_with(TMP_PREFIX))
            && let Err(e) = fs::remove_dir_all(entry.path())
        {
            warn!(path = %entry.path().display(), error = %e, "could not delete an old index dump");
        }
    }
}

pub(super) fn load_from(
    dir: &Path,
    dim: usize,
    params: IndexParams,
) -> Result<Option<(VectorIndex, u64)>, IndexError> {
    let started = Instant::now();
    let params = params.sanitized();
    let manifest_path = dir.join(MANIFEST);
    let bytes = match fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            debug!(dir = %dir.display(), "no index dump");
            return Ok(None);
        }
        Err(e) => return Err(io_err("read manifest", &manifest_path)(e)),
    };
    let stale = |why: String| {
        info!(dir = %dir.display(), %why, "index dump is stale; ignoring it");
        Ok(None)
    };
    let manifest = match parse_manifest(&bytes) {
        Ok(manifest) => manifest,
        Err(reason) if reason.starts_with(OTHER_FORMAT) => {
            return stale(format!("{reason} (want {FORMAT_VERSION})"));
        }
        Err(reason) => return Err(corrupt(dir, reason)),
    };
    if manifest.format_version != FORMAT_VERSION || manifest.platform != platform() {
        return stale(format!(
            "format {} on {} (want {FORMAT_VERSION} on {})",
            manifest.format_version,
            manifest.platform,
            platform()
        ));
    }
    let store_version: u64 = manifest
        .store_version
        .parse()
        .map_err(|e| corrupt(dir, format!("store_version: {e}")))?;
    if manifest.dim != dim {
        return stale(format!("dimension {}, want {dim}", manifest.dim));
    }
    if manifest.graph != GraphParams::from(&params) {
        return stale(format!(
            "graph params {:?}, want {:?}",
            manifest.graph,
            GraphParams::from(&params)
        ));
    }
    check_manifest(&manifest).map_err(|reason| corrupt(dir, reason))?;

    // One pass over the graph file: it is hashed as it is parsed, and the
    // graph is used only if the hash then matches (the parser itself never
    // panics and bounds-checks every id, whatever the bytes).
    let data_dir = dir.join(&manifest.data_dir);
    let graph = match manifest.files.first() {
        None => Graph::with_vector_dir(shape_of(&params), params.vector_dir.as_deref()),
        Some(entry) => {
            let path = data_dir.join(&entry.name);
            let file =
                File::open(&path).map_err(|e| corrupt(dir, format!("{}: {e}", entry.name)))?;
            let len = file
                .metadata()
                .map_err(|e| corrupt(dir, format!("{}: {e}", entry.name)))?
                .len();
            if len != entry.len {
                return Err(corrupt(
                    dir,
                    format!("{}: {len} bytes; manifest says {}", entry.name, entry.len),
                ));
            }
            let mut input = HashingReader::new(BufReader::with_capacity(1 << 20, file));
            let parsed = Graph::read_from(
                dim,
                shape_of(&params),
                params.vector_dir.as_deref(),
                &mut input,
            );
            let sha256 = input.finish();
            if sha256 != entry.sha256 {
                return Err(corrupt(
                    dir,
                    format!(
                        "{}: sha256 {sha256}; manifest says {}",
                        entry.name, entry.sha256
                    ),
                ));
            }
            parsed.map_err(|reason| corrupt(dir, format!("graph file: {reason}")))?
        }
    };
    let generation = build_generation(graph, &manifest).map_err(|reason| corrupt(dir, reason))?;
    info!(
        dir = %dir.display(),
        points = manifest.point_count,
        live = manifest.live_count,
        store_version,
        elapsed = ?started.elapsed(),
        "index loaded from dump"
    );
    Ok(Some((
        VectorIndex::from_generation(dim, params, generation),
        store_version,
    )))
}

/// Internal consistency of a manifest whose checksum already matched (this
/// catches bugs and tampering rather than bit rot).
fn check_manifest(m: &Manifest) -> Result<(), String> {
    if m.keys.len() != m.point_count {
        return Err(format!(
            "{} keys for {} points",
            m.keys.len(),
            m.point_count
        ));
    }
    if m.live_count + m.dead.len() != m.point_count {
        return Err(format!(
            "{} live + {} dead != {} points",
            m.live_count,
            m.dead.len(),
            m.point_count
        ));
    }
    if m.dead.windows(2).any(|w| w[0] >= w[1]) || m.dead.last().is_some_and(|&d| d >= m.point_count)
    {
        return Err("dead ids not ascending or out of range".into());
    }
    if !is_plain_name(&m.data_dir) || !m.data_dir.starts_with(GEN_PREFIX) {
        return Err(format!("bad data_dir {:?}", m.data_dir));
    }
    let expected: &[&str] = if m.point_count == 0 {
        &[]
    } else {
        &[GRAPH_FILE]
    };
    let listed: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    if listed != expected {
        return Err(format!("files {listed:?}, expected {expected:?}"));
    }
    Ok(())
}

fn build_generation(graph: Graph, m: &Manifest) -> Result<Generation, String> {
    if graph.len() != m.point_count {
        return Err(format!(
            "graph has {} points, manifest {}",
            graph.len(),
            m.point_count
        ));
    }
    let slots = SlotTable::new();
    let mut by_key: HashMap<Arc<str>, usize> = HashMap::with_capacity(m.live_count);
    let mut dead = m.dead.iter().peekable();
    for (id, key) in m.keys.iter().enumerate() {
        let live = dead.next_if_eq(&&id).is_none();
        let key: Arc<str> = Arc::from(key.as_str());
        if live && by_key.insert(Arc::clone(&key), id).is_some() {
            return Err(format!("key {key:?} is live twice"));
        }
        if slots.push(Slot::new(key, live)) != Some(id) {
            return Err(format!("could not place point {id}"));
        }
    }
    Ok(Generation::from_parts(graph, slots, by_key, m.dead.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(keys: Vec<String>, dead_mask: u64, store_version: u64) -> Manifest {
        let dead: Vec<usize> = (0..keys.len())
            .filter(|i| dead_mask >> (i % 64) & 1 == 1)
            .collect();
        Manifest {
            format_version: FORMAT_VERSION,
            platform: platform(),
            dim: 1280,
            store_version: store_version.to_string(),
            point_count: keys.len(),
            live_count: keys.len() - dead.len(),
            created_unix_ms: 1,
            data_dir: "gen-1".into(),
            dead,
            keys,
            graph: GraphParams::from(&IndexParams::default()),
            files: vec![FileEntry {
                name: GRAPH_FILE.into(),
                len: 12,
                sha256: sha256_hex(b"x"),
            }],
        }
    }

    proptest! {
        /// Any key text (quotes, newlines, control characters, non-ASCII)
        /// and any u64 store version survive the TOML manifest.
        #[test]
        fn manifest_round_trips(
            keys in prop::collection::vec(any::<String>(), 0..20),
            dead_mask in any::<u64>(),
            store_version in any::<u64>(),
        ) {
            let m = manifest(keys, dead_mask, store_version);
            let text = render_manifest(&m).expect("renders");
            prop_assert_eq!(parse_manifest(text.as_bytes()).expect("parses"), m);
        }

        /// Any single damaged byte is rejected, wherever it is.
        #[test]
        fn damaged_manifest_is_rejected(
            keys in prop::collection::vec("[a-z0-9-]{1,12}", 1..20),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let text = render_manifest(&manifest(keys, 0b101, 9)).expect("renders");
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(parse_manifest(&bytes).is_err());
        }
    }

    fn small_index(params: IndexParams) -> VectorIndex {
        let index = VectorIndex::new(4, params);
        for i in 0..20_u8 {
            let v: Vec<f32> = (0..4).map(|j| f32::from(i * 4 + j + 1)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let v: Arc<[f32]> = v.iter().map(|x| x / norm).collect();
            index.upsert(Arc::from(format!("k{i}")), v).expect("valid");
        }
        index
    }

    /// A graph file that matches its (re-signed) manifest but does not
    /// parse is reported as corruption, not a panic.
    #[test]
    fn unparseable_graph_file_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        small_index(IndexParams::default())
            .dump(dir.path(), 3)
            .expect("dump");
        let manifest_path = dir.path().join(MANIFEST);
        let mut m = parse_manifest(&fs::read(&manifest_path).expect("readable")).expect("valid");
        // Break the graph file's magic number, then make the checksums agree.
        let graph = dir.path().join(&m.data_dir).join(&m.files[0].name);
        let mut bytes = fs::read(&graph).expect("readable");
        bytes[0] ^= 0xff;
        m.files[0].len = bytes.len() as u64;
        m.files[0].sha256 = sha256_hex(&bytes);
        fs::write(&graph, bytes).expect("writable");
        fs::write(&manifest_path, render_manifest(&m).expect("renders")).expect("writable");

        match VectorIndex::load(dir.path(), 4, IndexParams::default()) {
            Err(IndexError::CorruptDump { reason, .. }) => {
                assert!(reason.contains("graph file"), "{reason}")
            }
            other => panic!("expected CorruptDump, got {other:?}"),
        }
    }

    /// A dump of another format version (e.g. an hnsw_rs one) is stale: the
    /// caller rebuilds from the store without reporting corruption.
    #[test]
    fn other_format_version_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = "format_version = 1\nhnsw_basename = \"graph\"\n";
        let text = format!("{HEADER_PREFIX}{}\n{body}", sha256_hex(body.as_bytes()));
        fs::write(dir.path().join(MANIFEST), text).expect("writable");
        assert!(matches!(
            VectorIndex::load(dir.path(), 4, IndexParams::default()),
            Ok(None)
        ));
    }

    /// A dump records its metric: loaded under another metric it is stale
    /// (the caller rebuilds from the store), under its own it is the same
    /// index. A cosine dump does not mention metrics, so it reads the same
    /// as the dumps written before they existed.
    #[test]
    fn a_dump_of_another_metric_is_stale() {
        for metric in [Metric::Dot, Metric::Euclidean, Metric::Manhattan] {
            let params = IndexParams {
                metric,
                ..IndexParams::default()
            };
            let index = VectorIndex::new(4, params.clone());
            for i in 0..20_u8 {
                // Not unit vectors: fine under every metric but cosine.
                let v: Arc<[f32]> = (0..4).map(|j| f32::from(i * 4 + j + 1)).collect();
                index.upsert(Arc::from(format!("k{i}")), v).expect("valid");
            }
            let dir = tempfile::tempdir().expect("tempdir");
            index.dump(dir.path(), 7).expect("dump");
            let text = fs::read_to_string(dir.path().join(MANIFEST)).expect("readable");
            assert!(text.contains(&format!("metric = \"{metric}\"")), "{text}");
            for other in Metric::ALL.into_iter().filter(|m| *m != metric) {
                let other = IndexParams {
                    metric: other,
                    ..IndexParams::default()
                };
                assert!(
                    matches!(VectorIndex::load(dir.path(), 4, other), Ok(None)),
                    "a {metric} dump loaded as another metric"
                );
            }
            let (loaded, at) = VectorIndex::load(dir.path(), 4, params)
                .expect("intact")
                .expect("current");
            assert_eq!((at, loaded.metric()), (7, metric));
            let query = [1.0, 40.0, 3.0, 2.0];
            assert_eq!(
                loaded.search_exact(&query, 5, &|_| true),
                index.search_exact(&query, 5, &|_| true)
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        small_index(IndexParams::default())
            .dump(dir.path(), 1)
            .expect("dump");
        let text = fs::read_to_string(dir.path().join(MANIFEST)).expect("readable");
        assert!(!text.contains("metric"), "{text}");
        let euclidean = IndexParams {
            metric: Metric::Euclidean,
            ..IndexParams::default()
        };
        assert!(matches!(
            VectorIndex::load(dir.path(), 4, euclidean),
            Ok(None)
        ));
        assert!(matches!(
            VectorIndex::load(dir.path(), 4, IndexParams::default()),
            Ok(Some(_))
        ));
    }

    #[test]
    fn graphs_with_fewer_layers_round_trip() {
        let params = IndexParams {
            max_layer: 2,
            ..IndexParams::default()
        };
        let index = small_index(params.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        index.dump(dir.path(), 1).expect("dump");
        let (loaded, _) = VectorIndex::load(dir.path(), 4, params)
            .expect("intact")
            .expect("current");
        assert_eq!(loaded.len(), 20);
        let query = index.get("k3").expect("present");
        assert_eq!(
            loaded.search_exact(&query, 5, &|_| true),
            index.search_exact(&query, 5, &|_| true)
        );
    }
}
