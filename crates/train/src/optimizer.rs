use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::ParamsAdamW;
use rayon::prelude::*;

use crate::bert::Parameter;

/// AdamW as sentence-transformers' `fit` sets it up (torch's AdamW defaults, weight decay on
/// every weight but biases and LayerNorm parameters), after clipping the gradients' joint norm.
///
/// The update is candle-nn's `AdamW` (same hyper-parameters, same arithmetic) fused into one
/// parallel pass per parameter: candle-nn's makes a dozen tensor passes, each allocating, per
/// parameter per step, which costs a quarter of a MiniLM training step. Float32 parameters.
pub struct Optimizer {
    parameters: Vec<ParameterState>,
    params: ParamsAdamW,
    max_grad_norm: f64,
    steps: i32,
}

struct ParameterState {
    var: Var,
    weight_decay: f64,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
}

impl Optimizer {
    pub fn new<'a>(
        parameters: impl IntoIterator<Item = &'a Parameter>,
        weight_decay: f64,
        max_grad_norm: f64,
    ) -> Self {
        Optimizer {
            parameters: parameters
                .into_iter()
                .map(|p| ParameterState {
                    var: p.var.clone(),
                    weight_decay: if p.takes_weight_decay() {
                        weight_decay
                    } else {
                        0.0
                    },
                    first_moment: vec![0.0; p.var.elem_count()],
                    second_moment: vec![0.0; p.var.elem_count()],
                })
                .collect(),
            params: ParamsAdamW::default(),
            max_grad_norm,
            steps: 0,
        }
    }

    /// Clips the gradients, then updates every parameter that has one with learning rate `lr`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let grads: Vec<Option<Vec<f32>>> = self
            .parameters
            .iter()
            .map(|p| {
                grads
                    .get(&p.var)
                    .map(|g| g.flatten_all()?.to_vec1())
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let scale = clip_scale(
            grads.iter().flatten().map(Vec::as_slice),
            self.max_grad_norm,
        ) as f32;

        self.steps += 1;
        let ParamsAdamW {
            beta1, beta2, eps, ..
        } = self.params;
        let first_correction = 1.0 / (1.0 - beta1.powi(self.steps));
        let second_correction = 1.0 / (1.0 - beta2.powi(self.steps));
        for (state, grad) in self.parameters.iter_mut().zip(grads) {
            let Some(grad) = grad else { continue };
            let mut values: Vec<f32> = state.var.flatten_all()?.to_vec1()?;
            let decay = (1.0 - lr * state.weight_decay) as f32;
            let [beta1, beta2, eps, lr, first_correction, second_correction] =
                [beta1, beta2, eps, lr, first_correction, second_correction].map(|v| v as f32);
            values
                .par_iter_mut()
                .zip(&grad)
                .zip(
                    state
                        .first_moment
                        .par_iter_mut()
                        .zip(&mut state.second_moment),
                )
                .with_min_len(1 << 12)
                .for_each(|((value, &grad), (m, v))| {
                    let grad = grad * scale;
                    *m = *m * beta1 + grad * (1.0 - beta1);
                    *v = *v * beta2 + grad * grad * (1.0 - beta2);
                    let step = (*m * first_correction) / ((*v * second_correction).sqrt() + eps);
                    *value = *value * decay - step * lr;
                });
            state.var.set(&Tensor::from_vec(
                values,
                state.var.shape(),
                state.var.device(),
            )?)?;
        }
        Ok(())
    }
}

/// The factor `torch.nn.utils.clip_grad_norm_` scales gradients by so that their joint L2 norm
/// is at most `max_norm` (1 when it already is).
fn clip_scale<'a>(grads: impl Iterator<Item = &'a [f32]>, max_norm: f64) -> f64 {
    let sum_of_squares: f64 = grads
        .map(|g| {
            g.par_iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
        })
        .sum();
    (max_norm / (sum_of_squares.sqrt() + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::{AdamW, Optimizer as _};

    use super::*;

    #[test]
    fn clipping_scales_the_joint_norm_down_to_the_limit() {
        let grads: [&[f32]; 2] = [&[3.0, 0.0], &[4.0]]; // joint norm 5
        assert_eq!(clip_scale(grads.into_iter(), 10.0), 1.0);
        assert!((clip_scale(grads.into_iter(), 1.0) - 0.2).abs() < 1e-7);
    }

    /// A weight and a bias with the loss `sum(weight * a) + sum(bias * b)`, so that their
    /// gradients are `a` and `b`.
    fn parameters_and_loss(a: &Tensor, b: &Tensor) -> (Vec<Parameter>, impl Fn() -> Tensor) {
        let weight = Var::from_tensor(&(a * 0.5).unwrap()).unwrap();
        let bias = Var::from_tensor(&(b - 1.0).unwrap()).unwrap();
        let (w, v, a, b) = (weight.clone(), bias.clone(), a.clone(), b.clone());
        let loss = move || {
            ((w.as_tensor() * &a).unwrap().sum_all().unwrap()
                + (v.as_tensor() * &b).unwrap().sum_all().unwrap())
            .unwrap()
        };
        let parameters = vec![
            Parameter {
                name: "dense.weight".into(),
                var: weight,
            },
            Parameter {
                name: "dense.bias".into(),
                var: bias,
            },
        ];
        (parameters, loss)
    }

    #[test]
    fn matches_candle_nn_adamw() {
        let device = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (3, 5), &device).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &device).unwrap();
        let (ours, our_loss) = parameters_and_loss(&a, &b);
        let (reference, reference_loss) = parameters_and_loss(&a, &b);
        let mut optimizer = Optimizer::new(&ours, 0.01, f64::INFINITY);
        let config = |weight_decay| ParamsAdamW {
            weight_decay,
            ..ParamsAdamW::default()
        };
        let mut decayed = AdamW::new(vec![reference[0].var.clone()], config(0.01)).unwrap();
        let mut not_decayed = AdamW::new(vec![reference[1].var.clone()], config(0.0)).unwrap();
        for lr in [0.0, 1e-2, 5e-3] {
            optimizer.step(&our_loss().backward().unwrap(), lr).unwrap();
            let grads = reference_loss().backward().unwrap();
            for reference in [&mut decayed, &mut not_decayed] {
                reference.set_learning_rate(lr);
                reference.step(&grads).unwrap();
            }
        }
        for (ours, reference) in ours.iter().zip(&reference) {
            let difference = (ours.var.as_tensor() - reference.var.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(difference < 1e-6, "{}: {difference}", ours.name);
        }
        // The parameters moved (the first step has learning rate 0, the others do not).
        let moved = (ours[0].var.as_tensor() - (&a * 0.5).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert!(moved.min_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
    }
}
