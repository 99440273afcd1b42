// Caffe's learning-rate policies (SGDSolver::GetLearningRate) and DIGITS' "% of training" form
// parameters, so the form can preview the exact curve the solver will follow.
(function (root) {
  "use strict";

  // Form values (percentages, DIGITS-style gamma) -> solver parameters in iterations.
  function solverParams(form, maxIter) {
    const scale = maxIter / 100;
    const p = { policy: form.policy, base_lr: form.base_lr, max_iter: maxIter, gamma: form.gamma, power: form.power };
    switch (form.policy) {
      case "step": p.stepsize = Math.ceil(form.step_size * scale); break;
      case "multistep": p.stepvalue = (form.step_values || []).map(v => Math.ceil(v * scale)); break;
      case "exp": p.gamma = Math.pow(form.gamma, 1 / scale); break;
      case "inv": p.gamma = form.gamma / scale; break;
      case "sigmoid": p.gamma = -form.gamma / scale; p.stepsize = Math.ceil(form.step_size * scale); break;
    }
    return p;
  }

  // The rates for iterations 0..maxIter-1 (iter = updates already applied, as in Caffe).
  function schedule(p) {
    const rates = [];
    let currentStep = 0;  // multistep keeps state across calls, exactly like the solver
    for (let it = 0; it < p.max_iter; it++) {
      let lr;
      switch (p.policy) {
        case "fixed": lr = p.base_lr; break;
        case "step": lr = p.base_lr * Math.pow(p.gamma, Math.floor(it / p.stepsize)); break;
        case "exp": lr = p.base_lr * Math.pow(p.gamma, it); break;
        case "inv": lr = p.base_lr * Math.pow(1 + p.gamma * it, -p.power); break;
        case "multistep":
          if (currentStep < p.stepvalue.length && it >= p.stepvalue[currentStep]) currentStep += 1;
          lr = p.base_lr * Math.pow(p.gamma, currentStep);
          break;
        case "poly": lr = p.base_lr * Math.pow(1 - it / p.max_iter, p.power); break;
        case "sigmoid": lr = p.base_lr / (1 + Math.exp(-p.gamma * (it - p.stepsize))); break;
        default: throw new Error("unknown lr_policy " + p.policy);
      }
      rates.push(lr);
    }
    return rates;
  }

  // Each policy's form defaults, as DIGITS' model form has them (digits/model/forms.py): exp decays
  // by 0.95 per 1% of training, not by the step policies' 0.1.
  const DEFAULTS = {
    fixed: {},
    step: { step_size: 33, gamma: 0.1 },
    multistep: { gamma: 0.5 },
    exp: { gamma: 0.95 },
    inv: { gamma: 0.1, power: 0.5 },
    poly: { power: 3 },
    sigmoid: { step_size: 50, gamma: 0.1 },
  };

  root.CaffeLR = { solverParams: solverParams, schedule: schedule, DEFAULTS: DEFAULTS };
})(window);
