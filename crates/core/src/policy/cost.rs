//! Pricing: prices per GPU model and per kWh, and the cost of an instance.
//!
//! One cluster-scoped [`PriceList`] (the GpuPriceList `default`) prices GPU-hours per model
//! and, optionally, measured energy. [`planned_cost`] prices a booking before it runs,
//! [`actual_cost`] what it used; [`super::chargeback`] sums a period's use into the report.
//! Amounts are kept unrounded and rounded to cents only where printed, so that sums are not
//! thrown off by rounding each part.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use gpu_cloud_api::v1::{DEFAULT_SPOT_FACTOR, GpuPriceListSpec};
use serde::{Deserialize, Serialize};

/// Joules in a kilowatt-hour.
pub(crate) const JOULES_PER_KWH: f64 = 3.6e6;

/// The prices of the cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriceList {
    /// Currency of every price, e.g. `EUR` (only printed; no conversion is made).
    pub currency: String,
    /// Price of one GPU-hour by GPU model (`nvidia.com/gpu.product` value).
    #[serde(default)]
    pub per_gpu_hour: BTreeMap<String, f64>,
    /// Price of one GPU-hour of a model not listed; without it such a model has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_per_gpu_hour: Option<f64>,
    /// Price of one kWh of measured GPU energy; without it energy costs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_kwh: Option<f64>,
    /// A spot GPU-hour's price as a share of the model's (default
    /// [`DEFAULT_SPOT_FACTOR`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_factor: Option<f64>,
}

/// Why no cost could be worked out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CostError {
    /// The model is not priced and there is no default price.
    #[error("no price for GPU model {model:?}: add it to perGpuHour or set defaultPerGpuHour")]
    NoPrice {
        /// The GPU model.
        model: String,
    },
    /// A price is negative or not a number.
    #[error("price {what} is {value}: prices must be numbers of at least 0")]
    InvalidPrice {
        /// Which price (`perGpuHour[<model>]`, `defaultPerGpuHour`, `perKwh`).
        what: String,
        /// Its value.
        value: f64,
    },
    /// The spot factor is not between 0 and 1.
    #[error("spotFactor is {value}: it must be a share of the GPU-hour price between 0 and 1")]
    InvalidSpotFactor {
        /// Its value.
        value: f64,
    },
    /// The price list names no currency.
    #[error("the price list has no currency (e.g. EUR)")]
    NoCurrency,
    /// A usage figure is negative or not a number.
    #[error("{what} is {value}: usage figures must be numbers of at least 0")]
    InvalidFigure {
        /// Which figure (`gpuSeconds`, `energyJoules`).
        what: &'static str,
        /// Its value.
        value: f64,
    },
}

fn valid(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

impl PriceList {
    /// Checks every price and the currency, so that a bad price list is reported where it
    /// is written (its status, the chart) rather than as odd costs later.
    pub fn validate(&self) -> Result<(), CostError> {
        if self.currency.trim().is_empty() {
            return Err(CostError::NoCurrency);
        }
        let named = self
            .per_gpu_hour
            .iter()
            .map(|(m, p)| (format!("perGpuHour[{m}]"), Some(*p)));
        let others = [
            ("defaultPerGpuHour".to_owned(), self.default_per_gpu_hour),
            ("perKwh".to_owned(), self.per_kwh),
        ];
        for (what, price) in named.chain(others) {
            if let Some(value) = price.filter(|p| !valid(*p)) {
                return Err(CostError::InvalidPrice { what, value });
            }
        }
        self.spot_factor().map(|_| ())
    }

    /// The spot factor: the list's, else the default; between 0 and 1.
    pub fn spot_factor(&self) -> Result<f64, CostError> {
        match self.spot_factor {
            None => Ok(DEFAULT_SPOT_FACTOR),
            Some(f) if valid(f) && f <= 1.0 => Ok(f),
            Some(value) => Err(CostError::InvalidSpotFactor { value }),
        }
    }

    /// The price of one GPU-hour of `model`: its own, else the default.
    pub fn gpu_hour_price(&self, model: &str) -> Result<f64, CostError> {
        let (what, price) = match self.per_gpu_hour.get(model) {
            Some(p) => (format!("perGpuHour[{model}]"), *p),
            None => (
                "defaultPerGpuHour".to_owned(),
                self.default_per_gpu_hour
                    .ok_or_else(|| CostError::NoPrice {
                        model: model.to_owned(),
                    })?,
            ),
        };
        if valid(price) {
            Ok(price)
        } else {
            Err(CostError::InvalidPrice { what, value: price })
        }
    }

    fn kwh_price(&self) -> Result<f64, CostError> {
        match self.per_kwh {
            None => Ok(0.0),
            Some(p) if valid(p) => Ok(p),
            Some(value) => Err(CostError::InvalidPrice {
                what: "perKwh".into(),
                value,
            }),
        }
    }

    pub(crate) fn cost(
        &self,
        model: &str,
        spot: bool,
        gpu_hours: f64,
        energy_kwh: f64,
    ) -> Result<Cost, CostError> {
        let factor = if spot { self.spot_factor()? } else { 1.0 };
        let gpu = gpu_hours * self.gpu_hour_price(model)? * factor;
        let energy = energy_kwh * self.kwh_price()?;
        Ok(Cost {
            gpu,
            energy,
            total: gpu + energy,
            currency: self.currency.clone(),
        })
    }
}

/// An amount of money, unrounded, split by what it pays for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// For GPU-hours.
    pub gpu: f64,
    /// For energy.
    pub energy: f64,
    /// `gpu + energy`.
    pub total: f64,
    /// The price list's currency.
    pub currency: String,
}

impl Cost {
    pub(crate) fn add(&mut self, other: &Cost) {
        self.gpu += other.gpu;
        self.energy += other.energy;
        self.total += other.total;
    }
}

/// The total to the cent: `12.35 EUR`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} {}", self.total, self.currency)
    }
}

/// What a booking of `gpus` GPUs of `model` for `duration` will cost if it runs its whole
/// booking (shown when it is booked; `spot` for a preemptible one). Energy is not known in
/// advance and counts 0.
pub fn planned_cost(
    prices: &PriceList,
    model: &str,
    spot: bool,
    gpus: f64,
    duration: Duration,
) -> Result<Cost, CostError> {
    let hours = gpus * duration.as_secs_f64() / 3600.0;
    prices.cost(model, spot, hours, 0.0)
}

/// What an instance's measured use costs: `gpu_seconds` and `energy_joules` as in
/// `status.usage`.
pub fn actual_cost(
    prices: &PriceList,
    model: &str,
    spot: bool,
    gpu_seconds: f64,
    energy_joules: f64,
) -> Result<Cost, CostError> {
    check_figures(gpu_seconds, energy_joules)?;
    prices.cost(
        model,
        spot,
        gpu_seconds / 3600.0,
        energy_joules / JOULES_PER_KWH,
    )
}

pub(crate) fn check_figures(gpu_seconds: f64, energy_joules: f64) -> Result<(), CostError> {
    for (what, value) in [("gpuSeconds", gpu_seconds), ("energyJoules", energy_joules)] {
        if !valid(value) {
            return Err(CostError::InvalidFigure { what, value });
        }
    }
    Ok(())
}

impl From<&GpuPriceListSpec> for PriceList {
    fn from(s: &GpuPriceListSpec) -> Self {
        PriceList {
            currency: s.currency.clone(),
            per_gpu_hour: s.per_gpu_hour.clone(),
            default_per_gpu_hour: s.default_per_gpu_hour,
            per_kwh: s.per_kwh,
            spot_factor: s.spot_factor,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const H100: &str = "NVIDIA-H100-80GB-HBM3";
    pub(crate) const L4: &str = "NVIDIA-L4";

    /// The price list of the pricing and chargeback tests.
    pub(crate) fn prices() -> PriceList {
        PriceList {
            currency: "EUR".into(),
            per_gpu_hour: [(H100.to_owned(), 2.5), (L4.to_owned(), 0.5)].into(),
            default_per_gpu_hour: None,
            per_kwh: Some(0.3),
            spot_factor: None,
        }
    }

    #[test]
    fn spot_gpu_hours_cost_the_spot_factor_and_energy_the_same() {
        let mut p = prices();
        let c = actual_cost(&p, L4, true, 7200.0, 3.6e6).unwrap();
        assert_eq!(c.gpu, 1.0 * DEFAULT_SPOT_FACTOR);
        assert!((c.energy - 0.3).abs() < 1e-12);
        p.spot_factor = Some(0.2);
        let c = planned_cost(&p, H100, true, 2.0, Duration::from_secs(3600)).unwrap();
        assert!((c.total - 1.0).abs() < 1e-12, "{c:?}");
        p.spot_factor = Some(1.5);
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "spotFactor is 1.5: it must be a share of the GPU-hour price between 0 and 1"
        );
    }

    #[test]
    fn planned_and_actual_costs() {
        let p = prices();
        let c = planned_cost(&p, H100, false, 2.0, Duration::from_secs(4 * 3600)).unwrap();
        assert_eq!((c.gpu, c.energy, c.total), (20.0, 0.0, 20.0));
        assert_eq!(c.to_string(), "20.00 EUR");
        let c = actual_cost(&p, L4, false, 7200.0, 3.6e6).unwrap();
        assert!((c.total - 1.3).abs() < 1e-12, "{c:?}");
        assert_eq!(c.gpu, 1.0);
        let no_energy_price = PriceList {
            per_kwh: None,
            ..p.clone()
        };
        assert_eq!(
            actual_cost(&no_energy_price, L4, false, 7200.0, 3.6e6)
                .unwrap()
                .energy,
            0.0
        );
        assert_eq!(
            actual_cost(&p, L4, false, -1.0, 0.0)
                .unwrap_err()
                .to_string(),
            "gpuSeconds is -1: usage figures must be numbers of at least 0"
        );
    }

    #[test]
    fn unlisted_models_take_the_default_price_or_name_the_gap() {
        let p = prices();
        let e = planned_cost(&p, "NVIDIA-A100", false, 1.0, Duration::from_secs(3600)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no price for GPU model \"NVIDIA-A100\": add it to perGpuHour or set defaultPerGpuHour"
        );
        let p = PriceList {
            default_per_gpu_hour: Some(1.25),
            ..p
        };
        assert_eq!(p.gpu_hour_price("NVIDIA-A100"), Ok(1.25));
        assert_eq!(p.gpu_hour_price(H100), Ok(2.5));
    }

    #[test]
    fn bad_price_lists_are_reported_with_the_price_named() {
        assert_eq!(PriceList::default().validate(), Err(CostError::NoCurrency));
        let mut p = prices();
        p.per_gpu_hour.insert("X".into(), -1.0);
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "price perGpuHour[X] is -1: prices must be numbers of at least 0"
        );
        let p = PriceList {
            per_kwh: Some(f64::NAN),
            ..prices()
        };
        assert!(
            matches!(p.validate(), Err(CostError::InvalidPrice { what, .. }) if what == "perKwh")
        );
        assert!(prices().validate().is_ok());
        // Serialized as the CRD / chart values would write it.
        let json = serde_json::to_value(prices()).unwrap();
        assert_eq!(json["perGpuHour"][L4], 0.5);
        assert_eq!(json["perKwh"], 0.3);
    }
}
