"""Gymnasium environments for CRL: steering a frozen LM with SAE features, with verifiable-reward tasks."""
