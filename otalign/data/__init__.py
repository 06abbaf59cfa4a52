"""otalign.data"""
