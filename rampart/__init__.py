"""Rampart: shared configuration, key ring, Kafka clients, topics, logging and the CLI."""
