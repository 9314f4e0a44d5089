//! Costs of records that come without one, from the small price table in the configuration
//! (`[cost_tracker.prices."<model>"]`). The provider adapter's catalog is the source of truth;
//! the router normally sends the cost it computed from it, so this table only needs the models
//! whose records may arrive without a cost.

use std::collections::{BTreeMap, HashMap};

use tollgate_kit::money::Usd;

use crate::config::PriceConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: Usd,
    pub output: Usd,
    pub cached_input: Usd,
    pub cache_write: Usd,
}

/// Token counts a cost is computed from; `cached_input` is included in `input`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    by_model: HashMap<String, ModelPrice>,
}

impl PriceTable {
    /// Parses the configured prices; the error names the key (`prices."gpt-4o".input_per_mtok_usd`).
    pub fn from_config(prices: &BTreeMap<String, PriceConfig>) -> Result<Self, String> {
        let mut by_model = HashMap::with_capacity(prices.len());
        for (model, price) in prices {
            let field = |name: &str| format!("prices.\"{model}\".{name}");
            let parse = |name: &str, text: &str| {
                Usd::parse_price(&field(name), text).map_err(|e| e.to_string())
            };
            let input = parse("input_per_mtok_usd", &price.input_per_mtok_usd)?;
            let output = parse("output_per_mtok_usd", &price.output_per_mtok_usd)?;
            let or_input = |name: &str, text: &str| {
                if text.is_empty() {
                    Ok(input)
                } else {
                    parse(name, text)
                }
            };
            let cached_input = or_input(
                "cached_input_per_mtok_usd",
                &price.cached_input_per_mtok_usd,
            )?;
            let cache_write =
                or_input("cache_write_per_mtok_usd", &price.cache_write_per_mtok_usd)?;
            by_model.insert(
                model.clone(),
                ModelPrice {
                    input,
                    output,
                    cached_input,
                    cache_write,
                },
            );
        }
        Ok(Self { by_model })
    }

    pub fn price(&self, model: &str) -> Option<&ModelPrice> {
        self.by_model.get(model)
    }

    /// The exact cost of `tokens` on `model`; None when the model has no price (or on an
    /// overflow no real usage reaches).
    pub fn cost(&self, model: &str, tokens: TokenCounts) -> Option<Usd> {
        let price = self.price(model)?;
        let uncached = tokens.input.saturating_sub(tokens.cached_input);
        [
            Usd::cost_of_tokens(uncached, price.input)?,
            Usd::cost_of_tokens(tokens.cached_input, price.cached_input)?,
            Usd::cost_of_tokens(tokens.cache_write, price.cache_write)?,
            Usd::cost_of_tokens(tokens.output, price.output)?,
        ]
        .into_iter()
        .try_fold(Usd::ZERO, Usd::checked_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_and_cached_tokens_use_their_price() {
        let mut prices = BTreeMap::new();
        prices.insert(
            "m".to_owned(),
            PriceConfig {
                input_per_mtok_usd: "0.15".into(),
                output_per_mtok_usd: "0.6".into(),
                cached_input_per_mtok_usd: "0.075".into(),
                cache_write_per_mtok_usd: String::new(),
            },
        );
        let table = PriceTable::from_config(&prices).unwrap();
        let tokens = TokenCounts {
            input: 1000,
            output: 10,
            cached_input: 400,
            cache_write: 0,
        };
        // 600 × 0.15/1e6 + 400 × 0.075/1e6 + 10 × 0.6/1e6 = 0.00009 + 0.00003 + 0.000006
        assert_eq!(table.cost("m", tokens).unwrap().to_string(), "0.000126");
        assert!(table.cost("other", tokens).is_none());
    }

    #[test]
    fn bad_prices_name_the_key() {
        let mut prices = BTreeMap::new();
        prices.insert(
            "m".to_owned(),
            PriceConfig {
                input_per_mtok_usd: "abc".into(),
                ..Default::default()
            },
        );
        let error = PriceTable::from_config(&prices).unwrap_err();
        assert!(error.contains("prices.\"m\".input_per_mtok_usd"), "{error}");
    }
}
