//! EIP-712 vouchers: signing by the payer, checking by the payee.
//!
//! A voucher promises the payee a cumulative amount on one channel. Its typed data is
//! `Voucher(bytes32 channelId,uint256 cumulativeAmount)` in the domain
//! `SparePaymentChannels`, version `1`, bound to the chain id and the channel contract's address,
//! so a signature is valid for exactly one channel of one deployment on one chain.

use alloy::primitives::{Address, B256, Bytes, Signature, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolStruct, eip712_domain};

use crate::error::{Error, Result};

/// EIP-712 domain name the contract uses.
pub const DOMAIN_NAME: &str = "SparePaymentChannels";
/// EIP-712 domain version the contract uses.
pub const DOMAIN_VERSION: &str = "1";

/// Half the secp256k1 group order. A signature whose `s` is above it is the malleable twin of
/// a canonical one, and the contract rejects it.
const SECP256K1_HALF_ORDER: U256 = U256::from_be_slice(&alloy::hex!(
    "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0"
));

mod typed {
    #![allow(missing_docs)]
    alloy::sol! {
        /// The payer's promise; field names and order match the contract's VOUCHER_TYPEHASH.
        struct Voucher {
            bytes32 channelId;
            uint256 cumulativeAmount;
        }

        /// The payee's consent to close a channel at once after settling `cumulativeAmount`.
        struct CooperativeClose {
            bytes32 channelId;
            uint256 cumulativeAmount;
        }
    }
}

/// Returns the EIP-712 domain of the channel contract at `contract` on `chain_id`.
pub fn domain(chain_id: u64, contract: Address) -> Eip712Domain {
    eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: contract,
    }
}

/// Returns the digest the payer signs for a voucher.
pub fn voucher_digest(domain: &Eip712Domain, channel_id: B256, cumulative_amount: U256) -> B256 {
    typed::Voucher {
        channelId: channel_id,
        cumulativeAmount: cumulative_amount,
    }
    .eip712_signing_hash(domain)
}

/// Returns the digest the payee signs to consent to a cooperative close.
pub fn cooperative_close_digest(
    domain: &Eip712Domain,
    channel_id: B256,
    cumulative_amount: U256,
) -> B256 {
    typed::CooperativeClose {
        channelId: channel_id,
        cumulativeAmount: cumulative_amount,
    }
    .eip712_signing_hash(domain)
}

/// A voucher with the payer's 65-byte `r || s || v` signature, as the contract takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVoucher {
    /// Channel the voucher pays on.
    pub channel_id: B256,
    /// Total the payee may have claimed after redeeming it, in the channel token's base units.
    pub cumulative_amount: U256,
    /// Signature over [`voucher_digest`], `v` being 27 or 28.
    pub signature: Bytes,
}

/// Signs a voucher as `signer`. The signature has a low `s`, as the contract requires.
pub fn sign_voucher(
    signer: &PrivateKeySigner,
    domain: &Eip712Domain,
    channel_id: B256,
    cumulative_amount: U256,
) -> Result<SignedVoucher> {
    let digest = voucher_digest(domain, channel_id, cumulative_amount);
    let signature = sign_digest(signer, digest)?;
    Ok(SignedVoucher {
        channel_id,
        cumulative_amount,
        signature,
    })
}

/// Signs the payee's consent to close `channel_id` at `cumulative_amount` without a delay.
pub fn sign_cooperative_close(
    signer: &PrivateKeySigner,
    domain: &Eip712Domain,
    channel_id: B256,
    cumulative_amount: U256,
) -> Result<Bytes> {
    sign_digest(
        signer,
        cooperative_close_digest(domain, channel_id, cumulative_amount),
    )
}

/// Recovers the address that signed `voucher`. Rejects signatures that are not 65 bytes, have
/// a high `s` or do not recover, the same cases the contract rejects for an EOA payer.
pub fn recover_voucher_signer(domain: &Eip712Domain, voucher: &SignedVoucher) -> Result<Address> {
    let digest = voucher_digest(domain, voucher.channel_id, voucher.cumulative_amount);
    recover_signer(digest, &voucher.signature)
}

/// Checks that `voucher` was signed by `payer`.
pub fn verify_voucher(
    domain: &Eip712Domain,
    voucher: &SignedVoucher,
    payer: Address,
) -> Result<()> {
    let signer = recover_voucher_signer(domain, voucher)?;
    if signer != payer {
        return Err(Error::InvalidSignature(format!(
            "voucher for channel {} is signed by {signer}, not by the payer {payer}",
            voucher.channel_id
        )));
    }
    Ok(())
}

fn sign_digest(signer: &PrivateKeySigner, digest: B256) -> Result<Bytes> {
    let signature = signer
        .sign_hash_sync(&digest)
        .map_err(|err| Error::InvalidSignature(format!("signing failed: {err}")))?;
    Ok(Bytes::copy_from_slice(&signature.as_bytes()))
}

fn recover_signer(digest: B256, signature: &[u8]) -> Result<Address> {
    if signature.len() != 65 {
        return Err(Error::InvalidSignature(format!(
            "expected 65 bytes, got {}",
            signature.len()
        )));
    }
    let parsed = Signature::try_from(signature)
        .map_err(|err| Error::InvalidSignature(format!("malformed signature: {err}")))?;
    if parsed.s() > SECP256K1_HALF_ORDER {
        return Err(Error::InvalidSignature(
            "s is in the upper half of the curve order (malleable)".into(),
        ));
    }
    parsed
        .recover_address_from_prehash(&digest)
        .map_err(|err| Error::InvalidSignature(format!("cannot recover a signer: {err}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample() -> (PrivateKeySigner, Eip712Domain, SignedVoucher) {
        let signer = PrivateKeySigner::random();
        let domain = domain(31337, Address::repeat_byte(0x11));
        let voucher =
            sign_voucher(&signer, &domain, B256::repeat_byte(7), U256::from(1_000u64)).unwrap();
        (signer, domain, voucher)
    }

    #[test]
    fn signed_voucher_recovers_signer() {
        let (signer, domain, voucher) = sample();
        assert_eq!(
            recover_voucher_signer(&domain, &voucher).unwrap(),
            signer.address()
        );
        verify_voucher(&domain, &voucher, signer.address()).unwrap();
    }

    #[test]
    fn altered_amount_fails_verification() {
        let (signer, domain, mut voucher) = sample();
        voucher.cumulative_amount += U256::from(1u64);
        assert!(verify_voucher(&domain, &voucher, signer.address()).is_err());
    }

    #[test]
    fn other_domain_fails_verification() {
        let (signer, _, voucher) = sample();
        let other_chain = domain(1, Address::repeat_byte(0x11));
        let other_contract = domain(31337, Address::repeat_byte(0x22));
        assert!(verify_voucher(&other_chain, &voucher, signer.address()).is_err());
        assert!(verify_voucher(&other_contract, &voucher, signer.address()).is_err());
    }

    #[test]
    fn high_s_signature_is_rejected() {
        let (_, domain, voucher) = sample();
        let order = U256::from_be_slice(&alloy::hex!(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
        ));
        let bytes = voucher.signature.to_vec();
        let s = U256::from_be_slice(&bytes[32..64]);
        let mut twin = bytes.clone();
        twin[32..64].copy_from_slice(&(order - s).to_be_bytes::<32>());
        twin[64] = if bytes[64] == 27 { 28 } else { 27 };
        let malleable = SignedVoucher {
            signature: Bytes::from(twin),
            ..voucher
        };

        let err = recover_voucher_signer(&domain, &malleable).unwrap_err();
        assert!(err.to_string().contains("malleable"), "{err}");
    }

    #[test]
    fn short_signature_is_rejected() {
        let (_, domain, voucher) = sample();
        let short = SignedVoucher {
            signature: Bytes::from_static(&[1, 2, 3]),
            ..voucher
        };
        assert!(recover_voucher_signer(&domain, &short).is_err());
    }

    #[test]
    fn signatures_have_low_s() {
        for _ in 0..32 {
            let (_, _, voucher) = sample();
            let s = U256::from_be_slice(&voucher.signature[32..64]);
            assert!(s <= SECP256K1_HALF_ORDER);
        }
    }
}
