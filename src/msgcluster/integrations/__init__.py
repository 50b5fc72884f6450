"""Adapters to run an :class:`~msgcluster.worker.App` elsewhere: AWS Lambda
(``aws_lambda``) and FastAPI (``fastapi``, extra ``msgcluster[fastapi]``)."""
