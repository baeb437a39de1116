"""What the serving app writes under its event-log folder, and how everything else reads it.

    <event_log>/events/feedback-*.jsonl    fed-back events in the shop event format (`feedback`)
    <event_log>/requests/requests-*.jsonl  one line per answer: variant, items, scores, model inputs (`requests`)
    <event_log>/request.key                the key request ids are tagged with (`request_ids`)

The app (``serving/``) writes them; the data pipeline, the monitor and the retraining loop read them. Both sides
import the formats from here, so ``recsys`` never imports ``serving``.
"""
