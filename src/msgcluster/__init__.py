"""msgcluster: trackable, composable SQS work on aiobotocore."""
