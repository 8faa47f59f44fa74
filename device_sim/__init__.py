"""device_sim"""
