/// sentence-transformers' `WarmupLinear` learning-rate schedule (Hugging Face's
/// `get_linear_schedule_with_warmup`): from 0 up to the base rate over the warm-up steps, then
/// linearly down to 0 at the last step. As there, optimiser step k uses the rate of step k, so
/// the very first step has rate 0.
#[derive(Clone, Copy, Debug)]
pub struct WarmupLinear {
    base_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
}

impl WarmupLinear {
    /// `warmup_ratio` of `total_steps`, rounded up (as the Hugging Face trainer does).
    pub fn new(base_lr: f64, warmup_ratio: f64, total_steps: usize) -> Self {
        WarmupLinear {
            base_lr,
            warmup_steps: (total_steps as f64 * warmup_ratio).ceil() as usize,
            total_steps,
        }
    }

    pub fn lr_at(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps as f64
        } else {
            let left = self.total_steps.saturating_sub(step) as f64;
            left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let schedule = WarmupLinear::new(1.0, 0.1, 95); // ceil(9.5) = 10 warm-up steps
        let lr: Vec<f64> = (0..=95).map(|step| schedule.lr_at(step)).collect();
        assert_eq!(lr[0], 0.0);
        assert_eq!(lr[5], 0.5);
        assert_eq!(lr[10], 1.0);
        assert!((lr[94] - 1.0 / 85.0).abs() < 1e-15);
        assert_eq!(lr[95], 0.0);
        assert!(lr[10..].windows(2).all(|w| w[1] < w[0]));

        let no_warmup = WarmupLinear::new(2e-5, 0.0, 4);
        assert_eq!(no_warmup.lr_at(0), 2e-5);
        assert_eq!(no_warmup.lr_at(2), 1e-5);
    }
}
