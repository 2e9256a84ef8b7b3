"""See inside a transformer: information-flow routes, heads, neurons, vocabulary projection and
input attribution. Pure tensor maths over a trace of the canonical model (no server code).

    from lmscope.explain import explain, record, TraceView, compute_flow
    ex = explain(model, "The capital of France is", tokenizer=tok, tau=0.04)
    ex.routes            # RouteGraph: nodes/edges above tau reachable from the target token
    ex.save("report.html")
"""

from lmscope.explain.aggregate import ComponentStats, aggregate
from lmscope.explain.api import Explanation, explain, explain_view
from lmscope.explain.bias import BiasReport, run_probes
from lmscope.explain.bias_probes import load_probes
from lmscope.explain.causal import (
    head_agreement,
    patching_head_importance,
    route_faithfulness,
)
from lmscope.explain.circuit_diff import CircuitDiff, circuit_diff
from lmscope.explain.decompose import (
    Decomposition,
    attention_decomposition,
    mlp_decomposition,
    neuron_decomposition,
)
from lmscope.explain.errors import (
    EmptyPromptError,
    ExplainInputError,
    ExplanationCancelled,
    PromptTooLongError,
    TargetOutOfRangeError,
    ThresholdError,
    UnsupportedModelError,
)
from lmscope.explain.export import save, write_graphml, write_json
from lmscope.explain.faithfulness import Faithfulness, agreement, deletion_insertion
from lmscope.explain.flow import FlowGraph, compute_flow
from lmscope.explain.heads import (
    HeadContributions,
    HeadMap,
    attention_pattern,
    head_contribution_map,
    head_contributions,
    head_importance,
    top_heads,
)
from lmscope.explain.lens import (
    LensResult,
    Promotion,
    Trajectory,
    lens_logits,
    lens_table,
    logit_lens,
    promoted_by_block,
    promoted_by_head,
    promoted_by_neuron,
    promotions_at,
    trajectory,
)
from lmscope.explain.neurons import NeuronContributions, top_neurons
from lmscope.explain.perturb import feature_ablation, occlusion, shapley_value_sampling
from lmscope.explain.perturb_sampling import kernel_shap, lime
from lmscope.explain.proximity import importances, proximities
from lmscope.explain.routes import RouteEdge, RouteGraph, RouteNode, build_routes
from lmscope.explain.rules import fit_rules, model_decisions
from lmscope.explain.saliency import (
    Attribution,
    attention_rollout,
    gradient_x_input,
    integrated_gradients,
)
from lmscope.explain.trace import TraceView, record

__all__ = [
    "Attribution",
    "BiasReport",
    "CircuitDiff",
    "ComponentStats",
    "Decomposition",
    "EmptyPromptError",
    "ExplainInputError",
    "Explanation",
    "ExplanationCancelled",
    "Faithfulness",
    "FlowGraph",
    "HeadContributions",
    "HeadMap",
    "LensResult",
    "NeuronContributions",
    "Promotion",
    "PromptTooLongError",
    "RouteEdge",
    "RouteGraph",
    "RouteNode",
    "TargetOutOfRangeError",
    "ThresholdError",
    "TraceView",
    "Trajectory",
    "UnsupportedModelError",
    "aggregate",
    "agreement",
    "attention_decomposition",
    "attention_pattern",
    "attention_rollout",
    "build_routes",
    "circuit_diff",
    "compute_flow",
    "deletion_insertion",
    "explain",
    "explain_view",
    "feature_ablation",
    "fit_rules",
    "gradient_x_input",
    "head_agreement",
    "head_contribution_map",
    "head_contributions",
    "head_importance",
    "importances",
    "integrated_gradients",
    "kernel_shap",
    "lens_logits",
    "lens_table",
    "lime",
    "load_probes",
    "logit_lens",
    "mlp_decomposition",
    "model_decisions",
    "neuron_decomposition",
    "occlusion",
    "patching_head_importance",
    "promoted_by_block",
    "promoted_by_head",
    "promoted_by_neuron",
    "promotions_at",
    "proximities",
    "record",
    "route_faithfulness",
    "run_probes",
    "save",
    "shapley_value_sampling",
    "top_heads",
    "top_neurons",
    "trajectory",
    "write_graphml",
    "write_json",
]
