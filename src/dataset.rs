//! Reader for catalogue folders laid out like the Kaggle "Fashion Product
//! Images" set: `images/<id>.jpg` plus `styles.csv` whose columns are id,
//! gender, masterCategory, subCategory, articleType, baseColour, season,
//! year, usage, productDisplayName. Every column but `id` becomes an
//! attribute, so filters can use any of them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::domain::Attributes;

/// The label that evaluation treats as "same kind of product".
pub const ARTICLE_TYPE: &str = "articleType";

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path}: no `id` column in the header")]
    NoIdColumn { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub id: String,
    pub image: PathBuf,
    pub attributes: Attributes,
}

/// Reads `styles.csv` and keeps the rows whose image exists. Returns the
/// entries in file order and the number of rows skipped for a missing image.
pub fn read_catalog(dir: &Path) -> Result<(Vec<CatalogEntry>, usize), DatasetError> {
    let path = dir.join("styles.csv");
    let mut reader = csv::ReaderBuilder::new()
        // The Kaggle file has product names with unquoted commas in a few
        // rows; `flexible` keeps them and the extra fields are re-joined
        // into the last column below.
        .flexible(true)
        .from_path(&path)
        .map_err(|source| DatasetError::Csv {
            path: path.clone(),
            source,
        })?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|source| DatasetError::Csv {
            path: path.clone(),
            source,
        })?
        .iter()
        .map(str::to_owned)
        .collect();
    let id_col = header
        .iter()
        .position(|h| h == "id")
        .ok_or_else(|| DatasetError::NoIdColumn { path: path.clone() })?;
    let mut entries = Vec::new();
    let mut missing = 0;
    for record in reader.records() {
        let record = record.map_err(|source| DatasetError::Csv {
            path: path.clone(),
            source,
        })?;
        let Some(id) = record.get(id_col).map(str::trim).filter(|s| !s.is_empty()) else {
            continue;
        };
        let image = dir.join("images").join(format!("{id}.jpg"));
        if !image.is_file() {
            missing += 1;
            continue;
        }
        let mut attributes = BTreeMap::new();
        let last = header.len().saturating_sub(1);
        for (i, name) in header.iter().enumerate() {
            if i == id_col {
                continue;
            }
            let value = if i == last && record.len() > header.len() {
                record.iter().skip(last).collect::<Vec<_>>().join(",")
            } else {
                record.get(i).unwrap_or_default().to_owned()
            };
            if !value.is_empty() {
                attributes.insert(name.clone(), value);
            }
        }
        entries.push(CatalogEntry {
            id: id.to_owned(),
            image,
            attributes,
        });
    }
    Ok((entries, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_with_images_and_rejoins_extra_commas() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/1.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("images/3.jpg"), b"x").unwrap();
        std::fs::write(
            dir.path().join("styles.csv"),
            "id,gender,articleType,productDisplayName\n1,Men,Shirts,Blue shirt\n2,Women,Tops,No image\n3,Men,Watches,Steel, black dial\n",
        )
        .unwrap();
        let (entries, missing) = read_catalog(dir.path()).unwrap();
        assert_eq!(missing, 1);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1");
        assert_eq!(entries[0].attributes["articleType"], "Shirts");
        assert_eq!(
            entries[1].attributes["productDisplayName"],
            "Steel, black dial"
        );
        assert!(!entries[1].attributes.contains_key("id"));
    }
}
