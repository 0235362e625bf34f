//! The shop's catalog: what a recommendation shows (title, price, link, image) and filters on
//! (category, stock).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{RecommendError, Result};
use crate::nlu::slots::ProductName;
use crate::table::{cell, BadRow, Column, Format, Rows};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub title: String,
    pub category: Option<String>,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub url: Option<String>,
    pub image: Option<String>,
    pub in_stock: bool,
    /// Other names shoppers use for it (slot extraction matches these too).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A sentence or two about it: what product questions answer from, and what occasion and
    /// style words in a request are matched against.
    #[serde(default)]
    pub description: Option<String>,
    /// Colours it comes in (empty: not known).
    #[serde(default)]
    pub colors: Vec<String>,
    /// Sizes it comes in (empty: not known, or one size).
    #[serde(default)]
    pub sizes: Vec<String>,
}

fn list(cell: Option<String>) -> Vec<String> {
    cell.map(|a| {
        a.split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Products by id, in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub products: Vec<Product>,
}

impl Catalog {
    /// Reads `id,title[,category,price,currency,url,image,in_stock,aliases,description,colors,
    /// sizes]` (CSV/TSV/JSONL). `in_stock` is true unless it says `false`/`0`/`no`; aliases,
    /// colours and sizes are `|`-separated.
    pub fn load(path: &Path) -> Result<(Catalog, Vec<BadRow>)> {
        let err = |reason: String| RecommendError::Data {
            path: PathBuf::from(path),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| RecommendError::io(path, e))?;
        let format = Format::from_path(path)
            .ok_or_else(|| err("cannot tell the format from the extension".into()))?;
        let names = [
            "id|product_id|item",
            "title|name",
            "category",
            "price",
            "currency",
            "url",
            "image",
            "in_stock",
            "aliases",
            "description",
            "colors|colours",
            "sizes",
        ];
        let mut required = [false; 12];
        required[0] = true;
        required[1] = true;
        let rows = Rows::new(
            &bytes[..],
            format,
            names.iter().map(|c| Column::parse(c)).collect(),
            &required,
        )
        .map_err(|e| err(e.to_string()))?;
        let mut products = Vec::new();
        let mut bad = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (line, row) in rows {
            let p = row.map_err(String::from).and_then(|v| {
                let get = |i: usize| cell(&v, i);
                let id = get(0).ok_or("id missing")?;
                let title = get(1).ok_or("title missing")?;
                if !seen.insert(id.clone()) {
                    return Err(format!("id '{id}' repeated"));
                }
                let price = match get(3) {
                    Some(s) => Some(
                        s.parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite() && *x >= 0.0)
                            .ok_or_else(|| format!("price '{s}' is not a number"))?,
                    ),
                    None => None,
                };
                Ok(Product {
                    id,
                    title,
                    category: get(2),
                    price,
                    currency: get(4),
                    url: get(5),
                    image: get(6),
                    in_stock: !matches!(
                        get(7).map(|s| s.to_lowercase()).as_deref(),
                        Some("false" | "0" | "no")
                    ),
                    aliases: list(get(8)),
                    description: get(9),
                    colors: list(get(10)),
                    sizes: list(get(11)),
                })
            });
            match p {
                Ok(p) => products.push(p),
                Err(reason) => bad.push(BadRow { line, reason }),
            }
        }
        Ok((Catalog { products }, bad))
    }

    pub fn get(&self, id: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.id == id)
    }

    /// Names for slot extraction: each product's title and aliases.
    pub fn product_names(&self) -> Vec<ProductName> {
        self.products
            .iter()
            .map(|p| ProductName {
                id: p.id.clone(),
                names: std::iter::once(p.title.clone())
                    .chain(p.aliases.iter().cloned())
                    .collect(),
            })
            .collect()
    }
}
