"""provisioner"""
