"""Where messages come from: SQS, Kinesis, files and S3."""
