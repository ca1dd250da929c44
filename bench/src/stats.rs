//! Median and spread of repeated measurements.

/// Repeated measurements of one quantity.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    values: Vec<f64>,
}

impl Samples {
    /// No measurements yet.
    pub(crate) fn new() -> Self {
        Samples::default()
    }

    /// Adds one measurement.
    pub(crate) fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    /// How many measurements.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.values.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    /// The median (mean of the middle two for an even count); NaN when empty.
    pub(crate) fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// The smallest measurement; NaN when empty.
    pub(crate) fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The largest measurement; NaN when empty.
    pub(crate) fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let mut samples = Samples::new();
        assert!(samples.median().is_nan());
        for value in [5.0, 1.0, 3.0] {
            samples.push(value);
        }
        assert_eq!(samples.median(), 3.0);
        samples.push(4.0);
        assert_eq!(samples.median(), 3.5);
        assert_eq!((samples.min(), samples.max(), samples.len()), (1.0, 5.0, 4));
    }
}
