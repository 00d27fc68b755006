# frozen_string_literal: true

# Seeds an Omejdn checkout's storage for the token benchmark, through the core's
# own calls (so it works on any storage Omejdn is configured with), and prints
# pre-signed client assertions, one per line.
#
# Run from the Omejdn checkout: ruby -I<ruby-jwt>/lib seed.rb ISSUER COUNT KEYFILE
# KEYFILE receives the client's private key (PEM) on the first run and is reused.
# The client keeps its private key in storage only on the file store: its
# DefaultKeysDB cannot store a public-only key without a certificate.

$stdout.sync = true
require 'jwt'
require 'yaml'
require 'securerandom'
require 'fileutils'
require 'base64'
JWT.configuration.jwk.kid_generator_type = :rfc7638_thumbprint
%w[plugins config keys user client].each { |lib| require File.expand_path("lib/#{lib}", Dir.pwd) }

issuer, count, keyfile, with_private = ARGV
PluginLoader.initialize
Config.setup

key = File.exist?(keyfile) ? OpenSSL::PKey::RSA.new(File.read(keyfile)) : OpenSSL::PKey::RSA.new(2048)
File.write(keyfile, key.to_pem) unless File.exist?(keyfile)
jwk = JWT::JWK.new(with_private == 'private' ? key : key.public_key, use: 'sig', alg: 'RS256')

client = Client.from_h(
  'client_id' => 'bench_client',
  'token_endpoint_auth_method' => 'private_key_jwt',
  'grant_types' => ['client_credentials'],
  'scope' => ['omejdn:write'],
  'attributes' => { 'omejdn' => 'write' },
  'jwks' => JWT::JWK::Set.new(jwk).export(include_private: with_private == 'private')
)
Client.delete_client('bench_client') if Client.find_by_id('bench_client')
Client.add_client(client, 'default')
Keys.load_keys(KEYS_TARGET_OMEJDN, 'omejdn', create: true)

now = Time.now.to_i
Integer(count).times do
  claims = { 'iss' => 'bench_client', 'sub' => 'bench_client', 'aud' => "#{issuer}/token",
             'iat' => now, 'nbf' => now, 'exp' => now + 3600, 'jti' => SecureRandom.uuid }
  puts JWT.encode(claims, key, 'RS256', { kid: jwk[:kid] })
end
