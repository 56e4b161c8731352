//! The provider's catalog: upstream models mapped to canonical ids, with prices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spare_gossip::{Api, ModelOffer};

/// A price in token base units per million tokens, separate for input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Base units per million input tokens.
    pub input: u64,
    /// Base units per million output tokens.
    pub output: u64,
}

/// One model on sale and where it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// Canonical id that buyers request.
    pub id: String,
    /// Index of the upstream that serves it.
    pub upstream: usize,
    /// The upstream's own name for the model.
    pub upstream_model: String,
    /// Its price.
    pub price: Price,
    /// APIs the upstream speaks.
    pub apis: Vec<Api>,
}

/// The models on sale, by canonical id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    /// Builds the catalog from each upstream's model list.
    ///
    /// `aliases` maps an upstream model name to the canonical id to sell it under; `prices`
    /// is keyed by canonical id and `default_price` covers the rest. When two upstreams serve
    /// the same canonical id, the first one listed wins.
    pub fn build(upstream_models: &[Vec<String>], aliases: &BTreeMap<String, String>, prices: &BTreeMap<String, Price>, default_price: Price) -> Self {
        let mut entries = BTreeMap::new();
        for (upstream, models) in upstream_models.iter().enumerate() {
            for upstream_model in models {
                let id = aliases.get(upstream_model).cloned().unwrap_or_else(|| upstream_model.clone());
                if entries.contains_key(&id) {
                    tracing::warn!(model = %id, upstream, "Model is served by an earlier upstream; this one is not used for it");
                    continue;
                }
                let price = prices.get(&id).copied().unwrap_or(default_price);
                let entry = CatalogEntry { id: id.clone(), upstream, upstream_model: upstream_model.clone(), price, apis: vec![Api::OpenAiChat] };
                entries.insert(id, entry);
            }
        }
        Self { entries }
    }

    /// Looks up a model by canonical id.
    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.entries.get(id)
    }

    /// Returns whether nothing is on sale.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Canonical ids on sale, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Returns the models as they appear in an offer.
    pub fn model_offers(&self) -> Vec<ModelOffer> {
        self.entries
            .values()
            .map(|e| ModelOffer { id: e.id.clone(), input_price: e.price.input, output_price: e.price.output, apis: e.apis.clone() })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_prices_apply_with_default_fallback() {
        let upstream_models = vec![vec!["gemma-3-270m-q4.gguf".to_string(), "other".to_string()]];
        let aliases = BTreeMap::from([("gemma-3-270m-q4.gguf".to_string(), "gemma-3-270m".to_string())]);
        let prices = BTreeMap::from([("gemma-3-270m".to_string(), Price { input: 5, output: 7 })]);
        let catalog = Catalog::build(&upstream_models, &aliases, &prices, Price { input: 1, output: 2 });

        let gemma = catalog.get("gemma-3-270m").unwrap();
        assert_eq!(gemma.upstream_model, "gemma-3-270m-q4.gguf");
        assert_eq!(gemma.price, Price { input: 5, output: 7 });
        assert_eq!(catalog.get("other").unwrap().price, Price { input: 1, output: 2 });
        assert!(catalog.get("gemma-3-270m-q4.gguf").is_none());
    }

    #[test]
    fn first_upstream_wins_a_shared_model() {
        let upstream_models = vec![vec!["m".to_string()], vec!["m".to_string()]];
        let catalog = Catalog::build(&upstream_models, &BTreeMap::new(), &BTreeMap::new(), Price { input: 1, output: 1 });
        assert_eq!(catalog.get("m").unwrap().upstream, 0);
        assert_eq!(catalog.model_offers().len(), 1);
    }
}
