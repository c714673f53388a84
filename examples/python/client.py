"""A minimal tokenwise client in Python: route a task, run the model (stubbed), post feedback,
and later record that the output was reused.

Generated from proto/tokenwise/v1/router.proto with grpcio-tools (see run.sh). Usage:

    python client.py [ADDRESS]        # default 127.0.0.1:50051, or $TOKENWISE_ADDR

With authentication on, set TOKENWISE_API_KEY; it is sent as `authorization: Bearer <key>`.
"""

import os
import sys

import grpc

from tokenwise.v1 import router_pb2, router_pb2_grpc


def call_model(model: str, task: str) -> tuple[str, int, int]:
    """Stands in for the LLM call: the answer and its input/output token counts."""
    answer = f"[{model}] 4"
    return answer, len(task.split()) * 2, 3


def grade(answer: str) -> float:
    """Stands in for the grader, test suite or user rating: a score in [0, 1]."""
    return 1.0 if answer.endswith("4") else 0.0


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TOKENWISE_ADDR", "127.0.0.1:50051")
    address = address.removeprefix("http://")
    key = os.environ.get("TOKENWISE_API_KEY")
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(address) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        task = "What is 2+2?"
        decision = router.Route(
            router_pb2.RouteRequest(task=task, workflow="faq", team="python-example"),
            metadata=metadata,
            timeout=5,
        )
        print(f"route: tier {decision.tier} ({decision.model}), complexity {decision.complexity:.2f}")
        print(f"  reason: {decision.reason}")
        answer, input_tokens, output_tokens = call_model(decision.model, task)
        ack = router.Feedback(
            router_pb2.FeedbackRequest(
                decision_id=decision.decision_id,
                score=grade(answer),
                input_tokens=input_tokens,
                output_tokens=output_tokens,
            ),
            metadata=metadata,
            timeout=5,
        )
        print(f"feedback: scope {ack.scope}, tier {ack.tier}, actual cost ${ack.actual_cost_usd:.6f}")
        # A second feedback for the same decision is refused: exactly once.
        try:
            router.Feedback(
                router_pb2.FeedbackRequest(decision_id=decision.decision_id, score=1.0),
                metadata=metadata,
                timeout=5,
            )
            print("error: a duplicate feedback was accepted", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            print(f"duplicate feedback: {e.code().name} ({e.details()})")
        # Later (up to the scope's reuse_retention_days): the answer was sent again, 12 times.
        reuse = router.RecordReuse(
            router_pb2.RecordReuseRequest(
                decision_id=decision.decision_id, count=12, event_id="faq-page-week-48", note="faq-bot"
            ),
            metadata=metadata,
            timeout=5,
        )
        print(f"reuse: {reuse.count} uses recorded, first reuse of this output: {reuse.first_reuse}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
