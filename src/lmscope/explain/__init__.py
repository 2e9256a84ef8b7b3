"""See inside a transformer: information-flow routes, heads, neurons, vocabulary projection and
input attribution. Pure tensor maths over a trace of the canonical model (no server code).

    from lmscope.explain import explain, record, TraceView, compute_flow
    ex = explain(model, "The capital of France is", tokenizer=tok, tau=0.04)
    ex.routes            # RouteGraph: nodes/edges above tau reachable from the target token
    ex.save("report.html")
"""

from lmscope.explain.api import Explanation, explain, explain_view
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
from lmscope.explain.proximity import importances, proximities
from lmscope.explain.routes import RouteEdge, RouteGraph, RouteNode, build_routes
from lmscope.explain.saliency import (
    Attribution,
    attention_rollout,
    gradient_x_input,
    integrated_gradients,
)
from lmscope.explain.trace import TraceView, record

__all__ = [
    "Attribution",
    "Decomposition",
    "EmptyPromptError",
    "ExplainInputError",
    "Explanation",
    "ExplanationCancelled",
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
    "attention_decomposition",
    "attention_pattern",
    "attention_rollout",
    "build_routes",
    "compute_flow",
    "explain",
    "explain_view",
    "gradient_x_input",
    "head_contribution_map",
    "head_contributions",
    "head_importance",
    "importances",
    "integrated_gradients",
    "lens_logits",
    "lens_table",
    "logit_lens",
    "mlp_decomposition",
    "neuron_decomposition",
    "promoted_by_block",
    "promoted_by_head",
    "promoted_by_neuron",
    "promotions_at",
    "proximities",
    "record",
    "save",
    "top_heads",
    "top_neurons",
    "trajectory",
    "write_graphml",
    "write_json",
]
